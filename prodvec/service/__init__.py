"""`prodvec serve`: search by photo over HTTP (FastAPI on uvicorn), and the page at /.

    from prodvec.service.app import create_app
    from prodvec.service.settings import service_settings
    app = create_app(service_settings())
"""

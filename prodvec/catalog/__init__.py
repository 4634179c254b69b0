"""Product catalogs (CSV or JSON Lines files) checked row by row and upserted into products."""
from prodvec.catalog.importer import ImportReport, import_catalog
from prodvec.catalog.readers import FORMATS, CatalogFormat
from prodvec.catalog.rows import CatalogRow, parse_row

__all__ = ["FORMATS", "CatalogFormat", "CatalogRow", "ImportReport", "import_catalog", "parse_row"]

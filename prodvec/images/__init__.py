"""Images, as search and the worker both need them: load bytes (path, file:// or http(s)),
decode them safely into pixels, and make the views a policy asks for. No torch here."""

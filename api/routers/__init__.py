"""One module per area of the API, each with a `router` whose `auth` says who may call
it (api/auth.py). api/v1.py mounts them; adding an endpoint is a function in one of these
modules, adding an area is a module and a line in api/v1.py's ROUTERS."""

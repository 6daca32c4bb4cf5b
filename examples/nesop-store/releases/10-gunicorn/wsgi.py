"""The store as gunicorn serves it: ``gunicorn wsgi:application`` (gunicorn.conf.py).

The app is set up from config.py, as ``python3 server.py`` sets it up, once:
in gunicorn's master process (preload_app), before it forks the workers.
"""

import server

application = server.StoreApp(server.settings_from_config())
server.log(f"{application.settings.store_name} {application.settings.version} (gunicorn)")
server.log_database_status(application)

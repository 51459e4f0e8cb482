"""The web dashboard: server-rendered pages under /ui (`routes.router`), included by the API app.

Templates (`templates/`), the stylesheet and the script (`static/`) ship in the package: nothing is
built and nothing is fetched from elsewhere at run time.
"""

from producer.ui.routes import router

__all__ = ["router"]

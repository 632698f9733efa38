"""The operator console (``/ui/``) and the voice playground (``/ui/playground``).

Server-rendered Jinja2 pages with a little plain JavaScript and CSS, all shipped in this package:
no build step, nothing fetched at run time. The console reads and changes the gateway only
through the admin API's handlers (``rtgate.api.admin``), so there is one path to the store.
"""

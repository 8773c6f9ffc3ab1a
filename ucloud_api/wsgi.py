"""The WSGI application gunicorn serves: configuration from the environment and config file."""

from ucloud_api.app import create_app
from ucloud_common.config import load_settings
from ucloud_common.logs import setup_logging

_settings = load_settings()
setup_logging(_settings.log_level, _settings.log_format)
app = create_app(_settings)

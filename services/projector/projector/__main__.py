from projector.app import MIGRATIONS, SCHEMA, create_app
from projector.settings import ProjectorSettings
from shared.runner import main

main("projector", SCHEMA, MIGRATIONS, ProjectorSettings, create_app)

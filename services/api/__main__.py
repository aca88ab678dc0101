"""`python -m services.api` (and `hadis serve api`, the supervisor's api child): the api service."""

from services.api.app import main
from shared.service import run

if __name__ == "__main__":
    run("api", main)

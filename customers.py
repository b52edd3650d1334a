"""`python customers.py <verb>`: the old alias of `cascade customers <verb>` (cascade/cli/customers.py).

python customers.py import customers.csv        # all rows or none; rejected rows listed
python customers.py show c-1001                 # the profile as the journeys see it
python customers.py export c-1001               # GDPR access
python customers.py erase c-1001 --yes          # GDPR erasure (aggregates kept)
"""

from cascade.cli.common import run_and_exit
from cascade.cli.customers import app

if __name__ == "__main__":
    run_and_exit(app)

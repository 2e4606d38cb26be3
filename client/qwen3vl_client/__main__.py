import sys

from qwen3vl_client.cli import main

sys.exit(main())

"""`python -m fastlm` is the `fastlm` command."""
from fastlm.cli import main

raise SystemExit(main())

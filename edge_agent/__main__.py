"""Allow `python -m edge_agent`."""

from edge_agent.entry import main

raise SystemExit(main())

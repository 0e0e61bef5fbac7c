from d3hr.cli import main

raise SystemExit(main())

"""Routing strategies, one file each; `conf/sink_strategy/<name>.yaml` instantiates `<name>.py`."""

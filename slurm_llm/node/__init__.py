"""What runs inside a replica's job on a compute node: the launcher that starts the engine,
leases its port and CPU cores, publishes its address once it answers, and keeps it alive.

It never imports the submit side (``slurm_llm.jobs``, ``slurm_llm.control``): a compute node
only needs the spec, the engines and the registry. ``tests/test_layers.py`` checks it.
"""

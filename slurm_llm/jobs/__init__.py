"""The submit side: executors (local processes or SLURM through submitit), the jobs that run a
replica or a front end (router, nginx), and what SLURM says of them (``squeue``/``sacct``).
"""

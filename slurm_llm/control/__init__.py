"""Deployments and the control plane: the ``Deployment`` handle, its durable state and event
log, the pure ``plan()`` that decides what to submit or cancel, the scheduler seam that does it,
and the controller that keeps a deployment whole while nobody watches.
"""

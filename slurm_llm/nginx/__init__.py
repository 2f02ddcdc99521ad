"""nginx in front of the replicas, as an alternative to slurm-llm's own router.

``render_config`` turns models and their replica URLs into a complete ``nginx.conf`` (from the
template shipped in ``nginx/``); ``NginxServer`` runs Debian's nginx with it as an unprivileged
child process and reloads it gracefully when the replicas change.
"""

from slurm_llm._public import present_as_public
from slurm_llm.nginx._config import NginxConfig, render_config, template_dir
from slurm_llm.nginx._errors import NginxConfigError, NginxError
from slurm_llm.nginx._follow import follow_registry, registry_upstreams
from slurm_llm.nginx._job import launch_nginx
from slurm_llm.nginx._server import NginxServer, ensure_nginx

__all__ = [
    "NginxConfig",
    "NginxConfigError",
    "NginxError",
    "NginxServer",
    "ensure_nginx",
    "follow_registry",
    "launch_nginx",
    "registry_upstreams",
    "render_config",
    "template_dir",
]

present_as_public(__name__, globals(), __all__)

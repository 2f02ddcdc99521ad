"""Real nginx, run in the foreground as a child of this process, configured from ``NginxConfig``.

nginx is the alternative to slurm-llm's own router where a site already trusts nginx: it is
written in C, uses one core for tens of thousands of requests per second and reloads a new set
of replicas without dropping a single stream. We run Debian's binary, installed on first use,
with a user prefix (no root, no /etc/nginx) and supervise it ourselves rather than through
systemd, because login and service nodes of HPC sites rarely let users run system services.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from types import TracebackType

from slurm_llm import _debian
from slurm_llm._files import tail
from slurm_llm._polling import polling
from slurm_llm.nginx._config import NginxConfig, render_config
from slurm_llm.nginx._errors import NginxError

# The ``nginx`` package exists on every Debian and Ubuntu release (``nginx-light`` is gone from
# newer ones); any package that provides /usr/sbin/nginx satisfies the check.
PACKAGES = ("nginx",)
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def ensure_nginx() -> str:
    """The nginx binary, installed with apt-get on first use (as root; others get the command)."""
    _debian.ensure_packages(PACKAGES, ("nginx",), NginxError, "slurm-llm's nginx front end")
    found = shutil.which("nginx", path=_debian.SEARCH_PATH)
    if found is None:  # pragma: no cover - ensure_packages checked it
        raise NginxError("nginx is not on PATH or in /usr/sbin")
    return found


class NginxServer:
    """One nginx master process serving ``config``; ``start()``, ``reload(new)``, ``stop()``.

    Every configuration is checked with ``nginx -t`` before nginx sees it, so a bad one fails
    with nginx's own words and leaves the running nginx untouched.
    """

    def __init__(self, config: NginxConfig, binary: str | None = None) -> None:
        self.config = config
        self.prefix = config.prefix
        self.conf_path = self.prefix / "nginx.conf"
        self.error_log = self.prefix / "logs" / "error.log"
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._master_pid: int | None = None  # an nginx another process started (attach)

    @classmethod
    def attach(cls, config: NginxConfig, binary: str | None = None) -> NginxServer:
        """The nginx that ``slurm-llm nginx run`` (another process) keeps under ``config.prefix``,
        found by its pid file, so that ``reload`` works from any shell."""
        server = cls(config, binary)
        pid_file = config.prefix / "nginx.pid"
        try:
            server._master_pid = int(pid_file.read_text().strip())
            os.kill(server._master_pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            raise NginxError(
                f"no nginx runs under {config.prefix} ({pid_file} is missing or stale); "
                "start one with: slurm-llm nginx run"
            ) from None
        return server

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def pid(self) -> int | None:
        """The master process's pid while it runs."""
        return None if self._process is None else self._process.pid

    @property
    def binary(self) -> str:
        if self._binary is None:
            self._binary = ensure_nginx()
        return self._binary

    def _prepare_prefix(self) -> None:
        for sub in ("logs", *(f"temp/{name}" for name in TEMP_DIRS)):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)

    def _with_user(self, config: NginxConfig) -> NginxConfig:
        """Under root, nginx would run its workers as ``nobody``, who usually cannot enter a
        private prefix; the workers then run as the prefix's owner, whoever created it."""
        if os.geteuid() != 0 or config.user is not None:
            return config
        owner = pwd.getpwuid(config.prefix.stat().st_uid).pw_name
        return replace(config, user=owner)

    def _write(self, config: NginxConfig, path: Path) -> None:
        # 0600: the configuration may hold API keys.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(render_config(config))

    def _argv(self, conf: Path) -> list[str]:
        return [self.binary, "-p", f"{self.prefix}/", "-e", str(self.error_log), "-c", str(conf)]

    def check(self, conf: Path | None = None) -> None:
        """``nginx -t`` on a configuration file; raises ``NginxError`` with nginx's output."""
        conf = conf or self.conf_path
        done = subprocess.run(
            [*self._argv(conf), "-t", "-q"], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip()
            raise NginxError(f"nginx rejected the configuration {conf}:\n{said}")

    def write_config(self) -> Path:
        """Writes ``nginx.conf`` under the prefix and checks it, without starting nginx."""
        self._prepare_prefix()
        self.config = self._with_user(self.config)
        self._write(self.config, self.conf_path)
        self.check()
        return self.conf_path

    def start(self, timeout: float = 10) -> None:
        """Checks the configuration, starts nginx and returns once it serves this config."""
        if self._process is not None and self._process.poll() is None:
            raise NginxError(f"nginx already runs here (pid {self._process.pid})")
        self.write_config()
        stderr = (self.prefix / "logs" / "stderr.log").open("ab")
        try:
            # Its own session: stop() can end the master and its workers together even if the
            # master dies without taking them down.
            self._process = subprocess.Popen(
                self._argv(self.conf_path),
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        finally:
            stderr.close()
        try:
            self._wait_serving(self.config, timeout)
        except NginxError:
            self.stop()
            raise

    def reload(self, config: NginxConfig, timeout: float = 10) -> None:
        """Serves ``config`` from now on without dropping a request.

        The new configuration is checked before it replaces the old one; nginx then starts new
        workers and lets the old ones finish what they serve (SIGHUP). Returns once ``/health``
        reports the new revision.
        """
        if config.prefix != self.prefix:
            raise NginxError(f"reload keeps the prefix {self.prefix}; got {config.prefix}")
        self._alive()
        config = self._with_user(config)
        candidate = self.conf_path.with_name("nginx.conf.new")
        self._write(config, candidate)
        try:
            self.check(candidate)
        except NginxError:
            candidate.unlink()
            raise
        candidate.replace(self.conf_path)
        os.kill(self._alive(), signal.SIGHUP)
        self._wait_serving(config, timeout)
        self.config = config

    def stop(self, graceful: bool = False, timeout: float = 10) -> None:
        """Stops nginx: at once (SIGTERM), or after the requests in flight (SIGQUIT)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT if graceful else signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        # Workers left behind by a master that died or hung.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def error_log_tail(self, lines: int = 20) -> str:
        return tail(self.error_log, lines, missing="(no error log)")

    def _alive(self) -> int:
        """The master's pid; NginxError (with its log) if it is gone."""
        if self._process is not None and self._process.poll() is None:
            return self._process.pid
        if self._master_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._master_pid, 0)
                return self._master_pid
        raise NginxError(f"nginx is not running; its error log:\n{self.error_log_tail()}")

    def _wait_serving(self, config: NginxConfig, timeout: float) -> None:
        """Until ``/health`` answers with this configuration's revision: that it is our nginx
        (not another server on the port) and that a reload has taken effect."""
        seen = "no answer"
        for _ in polling(timeout, every=0.02):
            self._alive()
            try:
                with urllib.request.urlopen(f"{config.url}/health", timeout=1) as answer:
                    body = json.loads(answer.read())
                if body.get("revision") == config.revision:
                    return
                seen = f"revision {body.get('revision')}"
            except (OSError, ValueError) as error:
                seen = str(error)
        raise NginxError(
            f"nginx did not serve revision {config.revision} at {config.url} within {timeout} s "
            f"(last: {seen}); its error log:\n{self.error_log_tail()}"
        )

    def __enter__(self) -> NginxServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

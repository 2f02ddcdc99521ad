import slurm_llm
import slurm_llm.bench
import slurm_llm.nginx
import slurm_llm.router
import slurm_llm.tribunal


def test_public_api_is_small_and_deliberate() -> None:
    assert slurm_llm.__all__ == [
        "Autoscale",
        "Deployment",
        "DeploymentError",
        "EndpointRecord",
        "EngineError",
        "ModelSpec",
        "Registry",
        "ReplicaStatus",
        "SlurmLLMError",
        "SlurmOptions",
        "SpecError",
        "__version__",
        "attach",
        "deploy",
        "list_deployments",
        "preset_files",
    ]


def test_everything_public_is_importable() -> None:
    for name in slurm_llm.__all__:
        assert getattr(slurm_llm, name) is not None


def test_the_router_api_is_pinned_too() -> None:
    assert slurm_llm.router.__all__ == [
        "POLICIES",
        "Backend",
        "BackendPool",
        "FrontEndJob",
        "ModelLoad",
        "ProbeConfig",
        "RouterConfig",
        "RouterThread",
        "build_app",
        "launch_router",
        "load_api_keys",
        "serve",
    ]
    for name in slurm_llm.router.__all__:
        assert getattr(slurm_llm.router, name) is not None


def test_the_nginx_api_is_pinned_too() -> None:
    assert slurm_llm.nginx.__all__ == [
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


def test_the_tribunal_api_is_pinned_too() -> None:
    assert slurm_llm.tribunal.__all__ == [
        "Law",
        "LawBook",
        "Round",
        "RouterClient",
        "Tribunal",
        "TribunalConfig",
        "TribunalError",
        "TribunalResult",
        "Verdict",
        "VerdictLog",
        "law_books",
        "read_verdict",
        "run_tribunal",
    ]


def test_the_bench_api_is_pinned_too() -> None:
    assert slurm_llm.bench.__all__ == [
        "PAPER_SHAPES",
        "BenchRun",
        "LatencyTargets",
        "LevelResult",
        "Percentiles",
        "RequestRecord",
        "Saturation",
        "SweepSettings",
        "Target",
        "TargetInfo",
        "Workload",
        "capacity_at_targets",
        "deployment_target",
        "front_end_target",
        "load_run",
        "percentile",
        "plot_runs",
        "run_sweep",
        "saturation_point",
        "save_run",
        "summarise_level",
        "url_target",
        "workloads",
        "write_dummy_model",
    ]
    for name in slurm_llm.bench.__all__:
        assert getattr(slurm_llm.bench, name) is not None


def test_public_names_present_themselves_under_their_public_module() -> None:
    assert repr(slurm_llm.Deployment) == "<class 'slurm_llm.Deployment'>"
    for module in (slurm_llm, slurm_llm.router, slurm_llm.nginx, slurm_llm.tribunal):
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type) or callable(value):
                assert value.__module__ == module.__name__, name

import slurm_llm


def test_public_api_is_small_and_deliberate() -> None:
    assert slurm_llm.__all__ == [
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

"""Joining a run: the launch settings from the environment and flags, checked before JAX is
asked to connect (real multi-process runs: tests/test_multiprocess*.py)."""

import pytest

from jaxalign.distributed import DistributedError, LaunchConfig, agree, gather, wait_for_coordinator


@pytest.fixture
def env(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_environment_then_flags(env):
    assert not LaunchConfig.from_env().explicit
    env.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    env.setenv("JAX_NUM_PROCESSES", "4")
    env.setenv("JAX_PROCESS_ID", "3")
    launch = LaunchConfig.from_env()
    assert (launch.coordinator, launch.num_processes, launch.process_id) == ("10.0.0.1:1234", 4, 3)
    launch.validate()
    override = LaunchConfig.from_env(process_id=1, heartbeat_timeout=7, init_timeout=None)
    assert (override.process_id, override.heartbeat_timeout, override.init_timeout) == (1, 7, 300)


@pytest.mark.parametrize("variables,message", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, "JAX_NUM_PROCESSES (or --num-processes) and JAX_PROCESS_ID (or --process-id) are not"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, "JAX_PROCESS_ID (or --process-id) is not"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "must be in 0..1"),
    ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two': expected an integer"),
])
def test_bad_launch_settings_are_one_clear_error(env, variables, message):
    for k, v in variables.items():
        env.setenv(k, v)
    with pytest.raises(DistributedError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LaunchConfig.from_env().validate()


def test_silent_coordinator_is_named():
    with pytest.raises(DistributedError, match=r"the coordinator 127.0.0.1:1 did not answer within 1 s"):
        wait_for_coordinator("127.0.0.1:1", 1)
    with pytest.raises(DistributedError, match="expected HOST:PORT"):
        wait_for_coordinator("nohost", 1)


def test_one_process_agrees_with_itself():
    assert gather("x", "v") == ["v"]
    agree("x", "anything")  # nothing to compare with

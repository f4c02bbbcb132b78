"""Every registered space ships a CPU reference LUT that covers it at the CLI's default
config. The reference tables are another machine's: nothing here assumes they are this
machine's (CI machines differ)."""

import pytest
from omegaconf import OmegaConf

import nas
from nas.app.run import compose_checked, make_components, register_config_nodes
from nas.lut import LUTCost, LUTFile, reference_path


@pytest.mark.parametrize("space_name", nas.list_spaces())
def test_shipped_lut_covers_the_space(space_name):
    register_config_nodes()
    cfg = OmegaConf.to_container(compose_checked([f"space={space_name}", "target=cpu"]), resolve=True)
    space = make_components(cfg, need=("space",))["space"]
    lut = LUTFile.load(reference_path("cpu", space_name))
    assert lut.meta["space_config"] == space.config()
    missing = [op.key for op in space.all_ops() if op.key not in lut.entries]
    assert not missing, f"{len(missing)} OpSpecs of {space_name} are not in its shipped LUT, e.g. {missing[0]}"
    assert lut.settings.rounds >= 7 and len(lut.overhead["models"]) >= 20
    assert lut.overhead_ms >= 0 and 0.5 < lut.scale < 2
    assert lut.meta["reference"] is True and lut.complete and lut.mode == "full"
    assert not lut.fingerprint.complete()  # its CPU generation was not recorded: never "this machine"
    cost = LUTCost("cpu", space, reference=True)
    assert cost.cost(space.ops(space.default_arch())) > 0
    assert cost.provenance().startswith("reference LUT of another machine: Intel(R) Xeon(R) Processor @ 2.50GHz")

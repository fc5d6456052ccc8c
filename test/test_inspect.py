"""`liquid-control inspect`: the summary and the wiring PNG."""

import subprocess
import sys

from policy_factory import make_policy


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "liquid_control.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_inspect_prints_layers_synapses_spec_provenance_and_hash(tmp_path):
    p = make_policy(seed=4)
    h = p.save(tmp_path / "p.lcp")
    out = run_cli("inspect", str(tmp_path / "p.lcp"), "--wiring-png", str(tmp_path / "w.png"))
    assert out.returncode == 0, out.stderr
    s = p.wiring.summary()
    text = out.stdout
    assert (
        f"{s['units']} neurons: {s['inter']} inter, {s['command']} command, {s['motor']} motor"
        in text
    )
    assert f"{s['synapses']} recurrent + {s['sensory_synapses']} sensory" in text
    assert f"{s['parameters']} effective" in text
    assert "j0_pos" in text and "joint_states sensor_msgs/JointState .position joint0" in text
    assert "effort0" in text and "limits [-3, 3]" in text
    assert h in text and "task: test" in text
    png = (tmp_path / "w.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_inspect_refuses_a_bad_file_with_the_reason(tmp_path):
    (tmp_path / "bad.lcp").write_bytes(b"\x80\x04junk")
    out = run_cli("inspect", str(tmp_path / "bad.lcp"))
    assert out.returncode == 2
    assert "pickle; policy files are never unpickled" in out.stdout


def test_inspect_into_a_closed_pipe_ends_quietly(tmp_path):
    """`liquid-control inspect POLICY | head -1`: the reader goes away, no traceback."""
    p = make_policy(seed=4)
    p.save(tmp_path / "p.lcp")
    proc = subprocess.Popen(
        [sys.executable, "-m", "liquid_control.cli", "inspect", str(tmp_path / "p.lcp")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # (before it writes: its print meets a broken pipe)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err

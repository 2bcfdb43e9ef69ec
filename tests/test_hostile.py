"""A hostile corpus against every command (issue 24): names over the file system's limits, huge, NUL-filled and
endless files (/dev/zero, FIFOs), Unicode and overlong numbers, huge option values, signals in the first second
and kill -9 while a pool starts. Each ends in one ``error:`` line, the right exit status, no traceback, under
2 GB peak memory, and no process of the command survives or holds the caller's pipes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _cli import one_line, run

LONG = "a" * 300  # one name over NAME_MAX (255 on every common file system)
LONG_PATH = "b/" * 2500  # 5,000 bytes: over PATH_MAX (4096)
PEAK_BYTES = 2 * 2**30






def run_process(argv: list[str], timeout: float = 120) -> tuple[int, str, int]:
    """The command line in a child process: (exit status, stderr, the child's peak RSS in bytes)."""
    # RUSAGE_CHILDREN's ru_maxrss is the largest of the waited-for descendants; measure in a fresh process.
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stderr.write(p.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
             "sys.exit(p.returncode)")
    proc = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "fuse4seg", *argv], check=False,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc.returncode, proc.stderr, int(proc.stdout.split()[-1]) * 1024


# ---- 1. paths over the file system's limits -------------------------------------------------------------------


def _path_cases(tmp: Path) -> list[tuple[list[str], str]]:
    """(argv, the flag the error must name) with an over-long path in each place a user gives one."""
    t = str(tmp)
    return [
        (["phantom", "--out", LONG, "--cases", "1"], "--out"),
        (["verify", LONG], "DIRECTORY"),
        (["cite", LONG], "DIRECTORY"),
        (["export", LONG], "DIRECTORY"),
        (["export", t, "--format", "nifti", "--out", f"{t}/{LONG}"], "--out"),
        (["build-benchmark", "--out", LONG], "--out"),
        (["build-benchmark", "--out", f"{t}/o", "--brats", LONG], "--brats"),
        (["build-benchmark", "--out", f"{t}/o", "--reports", LONG], "--reports"),
        (["build-benchmark", "--out", f"{t}/o", "--fusion-checkpoint", LONG], "--fusion-checkpoint"),
        (["train", "--benchmark", t, "--out", f"{t}/{LONG}"], "--out"),
        (["train", "--benchmark", LONG, "--out", f"{t}/r"], "--benchmark"),
        (["train", "--benchmark", t, "--out", f"{t}/r", "--init", LONG], "--init"),
        (["train", "--benchmark", t, "--out", f"{t}/r", "--config", LONG], "--config"),
        (["train", "--benchmark", t, "--out", f"{t}/r", "--fusion-model", "fusion-text", "--text-encoder", LONG_PATH],
         "--text-encoder"),
        (["pretrain", "--benchmark", t, "--out", LONG], "--out"),
        (["evaluate", "--run", LONG], "--run"),
        (["evaluate", "--run", t, "--volumes", LONG_PATH], "--volumes"),
        (["robustness", "--run", t, "--out", LONG], "--out"),
        (["robustness", "--run", LONG, "--out", f"{t}/o"], "--run"),
        (["fuse", "--run", t, "--case", LONG, "--out", f"{t}/o"], "--case"),
        (["fuse", "--run", t, "--case", t, "--out", LONG], "--out"),
        (["fuse", "--run", t, "--case", t, "--out", f"{t}/o", "--reports", LONG], "--reports"),
        (["score", "--pred", LONG, "--truth", t, "--convention", "monai", "--out", f"{t}/s.json"], "--pred"),
        (["score", "--pred", t, "--truth", t, "--convention", "monai", "--out", f"{t}/{LONG}.json"], "--out"),
        (["fusion-metrics", "--fused", t, "--sources", t, "--sources", LONG, "--out", f"{t}/f.json"], "--sources"),
        (["fusion-metrics", "--fused", t, "--sources", t, "--sources", t, "--out", LONG_PATH], "--out"),
        (["demo", "--out", LONG], "--out"),
    ]


def test_paths_over_the_file_systems_limits_are_one_line_naming_the_option(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """Every option and argument naming a path refuses a name over PC_NAME_MAX and a path over PC_PATH_MAX."""
    for argv, flag in _path_cases(tmp_path):
        code, err = run(argv, capsys)
        one_line(code, err, flag)
        assert "bytes" in err, (argv[0], err)
    assert list(tmp_path.iterdir()) == []


def test_a_derived_name_over_the_limit_is_one_line(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """A file name fuse4seg derives from user data (a long case id) that the file system refuses: one line."""
    from fuse4seg.data.phantom import options as phantom_options

    def refuse(options: object) -> Path:
        """What opening ``<out>/<a 300-byte case id>.nii.gz`` does."""
        return Path(os.open(tmp_path / f"{LONG}.nii.gz", os.O_RDONLY))  # type: ignore[arg-type]

    monkeypatch.setattr(phantom_options, "write_release", refuse)
    code, err = run(["phantom", "--out", str(tmp_path / "x"), "--cases", "1"], capsys)
    one_line(code, err, "File name too long")


# ---- 2. files read whole: size bounds, devices and FIFOs refused ------------------------------------------------


@pytest.fixture
def hostile_files(tmp_path: Path) -> dict[str, Path]:
    """A NUL-filled file over every text-file bound, a FIFO, /dev/zero and /dev/urandom."""
    nul = tmp_path / "nul.csv"
    with open(nul, "wb") as handle:
        handle.truncate(70 * 2**20)  # sparse: 70 MiB of NUL bytes, over the 64 MiB reports bound
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return {"nul": nul, "fifo": fifo, "zero": Path("/dev/zero"), "urandom": Path("/dev/urandom")}


def test_train_config_is_bounded_and_never_a_device_or_fifo(tmp_path: Path, hostile_files: dict[str, Path],
                                                            capsys: pytest.CaptureFixture) -> None:
    """--config: /dev/zero, /dev/urandom and a FIFO are refused without reading; a file over 1 MiB by its size."""
    for name, pattern in (("zero", "not a regular"), ("urandom", "not a regular"), ("fifo", "not a regular"),
                          ("nul", "over the limit")):
        code, err = run(["train", "--benchmark", str(tmp_path), "--out", str(tmp_path / "r"), "--config",
                         str(hostile_files[name])], capsys)
        one_line(code, err, pattern)
        assert "--config" in err


def test_reports_files_are_bounded_and_their_values_checked_where_parsed(phantom_release: Path, tmp_path: Path,
                                                                         hostile_files: dict[str, Path],
                                                                         capsys: pytest.CaptureFixture) -> None:
    """build-benchmark --reports: NUL files, devices, FIFOs, Unicode or 260-digit slice indices, texts with NUL or
    other control characters: one line naming --reports."""
    case = "BraTS2021_00000"
    rows = {"unicode digit": f"{case},\u00b2,text", "260 digits": f"{case},{'9' * 260},text",
            "int32": f"{case},2147483648,text", "5000 digits": f"{case},{'9' * 5000},text",
            "NUL text": f"{case},,te\0xt", "escape text": f"{case},,te\x1bxt"}
    files = {**hostile_files}
    for name, row in rows.items():
        files[name] = tmp_path / f"{name.replace(' ', '_')}.csv"
        files[name].write_text(f"case_id,slice_index,text\n{row}\n", encoding="utf-8")
    for name, path in files.items():
        code, err = run(["build-benchmark", "--out", str(tmp_path / "b"), "--brats", str(phantom_release), "--size",
                         "32", "--slices-per-case", "1", "--reports", str(path)], capsys)
        one_line(code, err, "--reports")
    assert not (tmp_path / "b").exists()


def test_fusion_metrics_refuses_images_over_its_memory_bound_from_the_header(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """A 1800 x 1800 16-bit PNG pair (under 2^26 pixels, over what 1 GiB of metrics memory allows with two
    sources) is refused from its header; --data-range 1e300 and --scale 1e300 are refused where parsed."""
    import cv2

    from fuse4seg.metrics.fusion_files import pixel_limit

    assert pixel_limit(2) < 1800 * 1800 < 2**26
    for folder in ("f", "a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "x.png"), np.zeros((1800, 1800), np.uint16))
    base = ["fusion-metrics", "--fused", str(tmp_path / "f"), "--sources", str(tmp_path / "a"), "--sources",
            str(tmp_path / "b")]
    one_line(*run([*base, "--out", str(tmp_path / "m.json")], capsys), "over the limit")
    one_line(*run([*base, "--out", str(tmp_path / "m.json"), "--data-range", "1e300"], capsys), "--data-range")
    one_line(*run([*base, "--out", str(tmp_path / "m.json"), "--scale", "1e300"], capsys), "--scale")


# ---- 3. options without bounds ----------------------------------------------------------------------------------


def test_huge_option_values_are_refused_before_anything_is_allocated(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """pretrain's batch size, width, depth, embedding size; train's 3-D patch; a text/fusion model option in TOML."""
    t = str(tmp_path)
    pre = ["pretrain", "--benchmark", t, "--out", f"{t}/p"]
    for extra, flag in ((["--batch-size", "100000"], "--batch-size"), (["--batch-size", "60000"], "--batch-size"),
                        (["--depth", "15"], "--depth"), (["--depth", "20"], "--depth"), (["--width", "100000"], "--width"),
                        (["--width", "512", "--depth", "8"], "--width"), (["--embed-dim", "10000000"], "--embed-dim"),
                        (["--steps", "10000000000"], "--steps")):
        one_line(*run([*pre, *extra], capsys), flag)
    train = ["train", "--benchmark", t, "--out", f"{t}/r"]
    one_line(*run([*train, "--dims", "3", "--patch", "256,256,256"], capsys), "--patch")
    for table in ('fusion_model = "fusion-text"\nfusion_options = {heads = 100000000}',
                  'fusion_model = "fusion-freq"\nfusion_options = {sigma = 1e9}'):
        (tmp_path / "c.toml").write_text(table + "\n", encoding="utf-8")
        one_line(*run([*train, "--config", str(tmp_path / "c.toml")], capsys), "fusion_options")


def _options_cases(tmp: Path) -> list[tuple[list[str], str]]:
    """(argv, the start of the one line) with one option of each command out of its declared bound."""
    t = str(tmp)
    run_, out = ["--run", t], ["--out", f"{t}/o"]
    score = ["score", "--pred", t, "--truth", t, "--out", f"{t}/s.json"]
    fusion = ["fusion-metrics", "--fused", t, "--sources", t, "--sources", t, "--out", f"{t}/f.json"]
    phantom = ["phantom", *out, "--cases", "1"]
    return [
        (["phantom", *out, "--cases", "5001"], "--cases: must be <= 5000"),
        ([*phantom, "--scale", "1e300"], "--scale: must be <= 1"),
        ([*phantom, "--scale", "nan"], "--scale: must be finite"),
        ([*phantom, "--workers", "100000"], "--workers: must be <= 256"),
        ([*phantom, "--seed", "99999999999999999999"], "--seed: must be an integer in [0, 4294967295]"),
        ([*phantom, "--naming", "brats2019"], "--naming: must be one of"),
        (["build-benchmark", *out, "--workers", "100000"], "--workers: must be <= 256"),
        (["robustness", *run_, *out, "--levels", "21"], "--levels: must be <= 20"),
        (["robustness", *run_, *out, "--fusion-slices", "10000000000"], "--fusion-slices: must be <= 10000000"),
        (["robustness", *run_, *out, "--workers", "100000"], "--workers: must be <= 256"),
        (["robustness", *run_, *out, "--seed", "4294967296"], "--seed: must be an integer"),
        (["robustness", *run_, *out, "--degradations", "noise," + "x" * 2000], "--degradations: must be a comma list"),
        (["robustness", *run_, *out, "--degradations", "sunburn"], "--degradations: unknown degradation 'sunburn'"),
        (["robustness", *run_, *out, "--split", "all"], "--split: must be one of train, val, test"),
        (["evaluate", *run_, "--max-slices", "0"], "--max-slices: must be >= 1"),
        (["evaluate", *run_, "--max-slices", "100000000000"], "--max-slices: must be <= 10000000"),
        (["evaluate", *run_, "--split", "all"], "--split: must be one of train, val, test"),
        (["evaluate", *run_, "--checkpoint", "first"], "--checkpoint: must be one of best, last"),
        (["evaluate", *run_, "--device", "tpu"], "--device: must be cpu or cuda"),
        (["evaluate", *run_, "--convention", "kaggle"], "--convention: must be one of monai, brats2023, brats2025"),
        (["evaluate", *run_, "--challenge", "lgg"], "--challenge: must be one of gli, ssa, ped, men, met"),
        (["fuse", *run_, "--case", t, *out, "--checkpoint", "first"], "--checkpoint: must be one of best, last"),
        (["fuse", *run_, "--case", t, *out, "--device", "tpu"], "--device: must be cpu or cuda"),
        ([*score, "--convention", "kaggle"], "--convention: must be one of"),
        ([*score, "--convention", "monai", "--challenge", "lgg"], "--challenge: must be one of"),
        ([*score, "--convention", "monai", "--workers", "100000"], "--workers: must be <= 256"),
        ([*fusion, "--workers", "100000"], "--workers: must be <= 256"),
        ([*fusion, "--data-range", "inf"], "--data-range: must be finite"),
        (["export", t, "--format", "csv"], "--format: must be one of parquet, nifti"),
        (["cite", t, "--format", "ris"], "--format: must be one of bibtex, cff"),
        (["demo", *out, "--threads", "100000"], "--threads: must be <= 1024"),
        (["demo", *out, "--threads", "0"], "--threads: must be >= 1"),
        (["demo", *out, "--seed", "-1"], "--seed: must be an integer in [0, 4294967295]"),
    ]


def test_every_commands_options_are_bounded_by_their_declarations(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """An option of phantom, build-benchmark, robustness, evaluate, fuse, score, fusion-metrics, export, cite or demo
    out of its declared bound: the declared check's one line (``must be ..., got ...``), before anything is made."""
    for argv, start in _options_cases(tmp_path):
        code, err = run(argv, capsys)
        one_line(code, err, f"error: {start}")
    assert list(tmp_path.iterdir()) == []


def test_every_option_of_these_commands_declares_a_check_or_is_a_path_or_a_flag() -> None:
    """The audit of issue 24: each field of each command's options declares a check, is a path (checked by the
    command line) or a bool; constants named beside the options equal the library's."""
    import dataclasses
    import typing

    from fuse4seg import demo_options, parallel
    from fuse4seg.data.package import export
    from fuse4seg.data.package import options as package
    from fuse4seg.data.phantom import options as phantom
    from fuse4seg.data.release.brats import SCHEMES
    from fuse4seg.evaluation import options as evaluation
    from fuse4seg.inference import options as inference
    from fuse4seg.metrics import conventions, fusion_files
    from fuse4seg.metrics import options as metrics
    from fuse4seg.train import config
    from fuse4seg.train import run as train_run

    classes = [phantom.PhantomOptions, evaluation.EvaluateOptions, evaluation.RobustnessOptions, inference.FuseOptions,
               metrics.ScoreOptions, metrics.FusionMetricsOptions, package.CiteOptions, package.ExportOptions,
               demo_options.DemoOptions]
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            declared = field.metadata.get("check") or field.metadata.get("path") or hints[field.name] is bool
            assert declared, f"{cls.__name__}.{field.name} declares no bound"
    assert demo_options.MAX_THREADS == config.MAX_THREADS and evaluation.MAX_EVAL_SLICES == config.MAX_EVAL_SLICES
    assert evaluation.CHECKPOINTS == train_run.CHECKPOINTS and package.EXPORT_FORMATS == export.FORMATS
    assert (metrics.MAX_DATA_RANGE, metrics.MAX_SCALE) == (fusion_files.MAX_DATA_RANGE, fusion_files.MAX_SCALE)
    assert set(conventions.CONVENTIONS) and set(SCHEMES) and parallel.MAX_WORKERS == 256


# ---- 4. headers and JSON claims: sizes, NaN / inf, overlong numbers, control characters --------------------------


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims ``width`` x ``height`` 8-bit grey pixels, with one tiny IDAT (far fewer bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        """One PNG chunk with its CRC."""
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_png_header_claiming_a_huge_image_is_refused_before_decoding(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """fusion-metrics: a 100-byte PNG claiming 100,000 x 100,000 pixels is one line from its header."""
    for folder in ("f", "a", "b"):
        (tmp_path / folder).mkdir()
        _png_claiming(tmp_path / folder / "x.png", 100_000, 100_000)
    argv = ["fusion-metrics", "--fused", str(tmp_path / "f"), "--sources", str(tmp_path / "a"), "--sources",
            str(tmp_path / "b"), "--out", str(tmp_path / "m.json")]
    code, err = run(argv, capsys)
    one_line(code, err, "x.png")
    assert "over the limit" in err or "decompression bomb" in err.lower(), err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("pixdim", [float("nan"), float("inf"), 3e38])
def test_nifti_voxel_sizes_that_are_nan_inf_or_overlong_are_one_line(tmp_path: Path, pixdim: float,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """score: a truth file whose header states a NaN, infinite or 3e38 mm voxel is refused from its header (HD95 in
    mm would be NaN or inf)."""
    import nibabel as nib

    sys.path.insert(0, str(Path(__file__).parent))
    from test_score import make_release

    release, preds, _ = make_release(tmp_path)
    seg = next(release.rglob("*seg.nii.gz"))
    image = nib.load(seg)
    header = image.header.copy()
    header["pixdim"][2] = pixdim
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, header), seg)
    code, err = run(["score", "--pred", str(preds), "--truth", str(release), "--convention", "monai", "--out",
                     str(tmp_path / "s.json")], capsys)
    one_line(code, err, "voxel size")
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "9" * 5000])
def test_a_run_config_json_with_nan_inf_or_overlong_numbers_is_one_line(tmp_path: Path, value: str,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """robustness --run: RUN/config.json whose lr is NaN, infinite (a literal or 1e999) or 5,000 digits long: one
    line naming the file, before any network is built or anything written."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(f'{{"options": {{"lr_upper": {value}}}, "derived": {{}}}}\n', encoding="utf-8")
    code, err = run(["robustness", "--run", str(run_dir), "--out", str(tmp_path / "o")], capsys)
    one_line(code, err, "config.json")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text", ["\\u001b[31mred", "a\\u0000b", "line\\u0007bell"])
def test_a_run_config_json_with_control_characters_is_one_line(tmp_path: Path, text: str,
                                                              capsys: pytest.CaptureFixture) -> None:
    """robustness --run: a string of RUN/config.json holding an escape, NUL or bell character (JSON-escaped, so
    the file itself is clean text): one line naming the file and the character, which is not echoed."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(f'{{"options": {{"fusion_model": "{text}"}}, "derived": {{}}}}\n',
                                         encoding="utf-8")
    code, err = run(["robustness", "--run", str(run_dir), "--out", str(tmp_path / "o")], capsys)
    one_line(code, err, "config.json")
    assert "control character U+00" in err and "\x1b" not in err and "\x07" not in err
    assert not (tmp_path / "o").exists()


# ---- peak memory of the worst files through a real process ------------------------------------------------------


@pytest.mark.slow
def test_hostile_files_stay_under_2_gb(tmp_path: Path, hostile_files: dict[str, Path]) -> None:
    """/dev/zero and a 70 MiB NUL file given as config and reports: one line, exit 1, peak RSS under 2 GB."""
    t = str(tmp_path)
    for argv in (["train", "--benchmark", t, "--out", f"{t}/r", "--config", "/dev/zero"],
                 ["train", "--benchmark", t, "--out", f"{t}/r", "--config", str(hostile_files["nul"])],
                 ["fuse", "--run", t, "--case", t, "--out", f"{t}/o", "--reports", str(hostile_files["nul"])]):
        code, err, peak = run_process(argv)
        assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert peak < PEAK_BYTES, (argv, peak)


# ---- 5. signals in the first second; 6. kill -9 while the pool starts -----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_early_signals_during_a_parallel_build_are_one_line(tmp_path: Path, signum: int) -> None:
    """SIGTERM / SIGINT at moments spread over the first second of build-benchmark --workers 2 after its handlers are
    in place (while the pool starts): one ``error:`` line, exit 128 + signal, no traceback, no output left."""
    out = tmp_path / "b"
    for delay in (0.05, 0.3, 0.6, 0.9, 1.2):
        proc = subprocess.Popen([sys.executable, "-m", "fuse4seg", "build-benchmark", "--out", str(out), "--phantom",
                                 "4", "--phantom-scale", "0.25", "--size", "32", "--workers", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        _wait_for_our_handlers(proc.pid)
        time.sleep(delay)
        proc.send_signal(signum)
        printed, err = proc.communicate(timeout=60)
        if proc.returncode in (0, -signum) and not err and (out / "brats_fuse.h5").is_file():
            # Finished first: the package is renamed into place whole, as its last step. A signal that lands while
            # the interpreter exits finds the default action (CPython restores it when it finalises), so the status
            # may then be -signum, before or after the summary reaches the pipe; nothing else may be left behind.
            assert [p.name for p in tmp_path.iterdir()] == [out.name], printed
            shutil.rmtree(out)
            continue
        one_line(proc.returncode, err, "terminated" if signum == signal.SIGTERM else "interrupted", status=128 + signum)
        assert not out.exists()


def _wait_for_our_handlers(pid: int, timeout: float = 30.0) -> None:
    """Return once process ``pid`` catches SIGTERM (fuse4seg.entry installs its SIGTERM and SIGINT handlers together,
    first thing): before that the interpreter is still starting (importing site), and no program can answer a
    signal with its own line. On a loaded machine that can take far longer than the delays above."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return  # already gone: the caller sees its exit status
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if caught >> (signal.SIGTERM - 1) & 1:
            return
        time.sleep(0.002)
    raise AssertionError(f"process {pid} did not install its signal handlers within {timeout} s")


def _kill_9_while_read(argv: list[str], delay: float) -> float:
    """Run the command with its output piped to a reader, SIGKILL it after ``delay`` s; the seconds the reader
    waited for the end of the output after the kill (a helper holding the pipes would make it wait)."""
    proc = subprocess.Popen([sys.executable, "-m", "fuse4seg", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    done = threading.Event()
    threading.Thread(target=lambda: (proc.communicate(), done.set()), daemon=True).start()
    time.sleep(delay)
    proc.kill()
    killed = time.monotonic()
    assert done.wait(20), f"the output of {argv[0]} stayed open 20 s after kill -9 (a surviving helper holds it)"
    return time.monotonic() - killed


def _descendants_of_init_named(pattern: str) -> list[str]:
    """Processes re-parented to init whose command line holds ``pattern`` (orphans of a killed command)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmdline = status.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((status.parent / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == 1 and pattern in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl")
def test_kill_9_in_the_first_second_of_a_pool_leaves_no_helper_and_no_open_pipe(tmp_path: Path) -> None:
    """score --workers 2 and fusion-metrics --workers 2 killed with SIGKILL while the pool starts: the reader of
    their output gets its end at once, and no forkserver, resource tracker or worker outlives them."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_score import make_release

    release, preds, _ = make_release(tmp_path / "score")
    argv = ["score", "--pred", str(preds), "--truth", str(release), "--convention", "monai", "--workers", "2"]
    pattern = "fuse4seg.metrics.scoring"  # in the command line of score's forkserver and its workers
    before = set(_descendants_of_init_named(pattern))
    for i, delay in enumerate((0.3, 0.6, 0.9, 1.2)):
        waited = _kill_9_while_read([*argv, "--out", str(tmp_path / f"s{i}.json")], delay)
        assert waited < 5, waited
    deadline = time.monotonic() + 10
    while set(_descendants_of_init_named(pattern)) - before:
        assert time.monotonic() < deadline, set(_descendants_of_init_named(pattern)) - before
        time.sleep(0.2)


def _children(pid: int) -> set[int]:
    """The pids of the direct children of ``pid`` (Linux /proc)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except (OSError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl")
def test_kill_9_of_train_leaves_no_dataloader_worker(bench: Path, tmp_path: Path) -> None:
    """train --num-workers 2 killed with SIGKILL while its DataLoader workers run: no worker survives it (each dies
    with the command: fuse4seg.parallel.loader_worker_init)."""
    proc = subprocess.Popen([sys.executable, "-m", "fuse4seg", "train", "--benchmark", str(bench), "--out",
                             str(tmp_path / "run"), "--mode", "direct", "--steps", "100000", "--num-workers", "2",
                             "--eval-every", "0", "--checkpoint-every", "100000", "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline, workers = time.monotonic() + 120, set()
        while len(workers) < 2:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no DataLoader workers started within 120 s"
            time.sleep(0.2)
            workers = {p for p in _children(proc.pid) if "python" in Path(f"/proc/{p}/cmdline").read_bytes().decode(
                errors="replace")} if _alive(proc.pid) else set()
        time.sleep(0.5)  # the workers are past their worker_init_fn
        proc.kill()
        proc.wait(timeout=20)
        deadline = time.monotonic() + 2  # the kernel's parent-death signal: at once (torch's own watchdog: 5 s)
        while any(_alive(p) for p in workers):
            assert time.monotonic() < deadline, [p for p in workers if _alive(p)]
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_pool_helpers_do_not_hold_the_callers_stdout(tmp_path: Path) -> None:
    """The forkserver ordered_map starts has stdout and stderr on /dev/null, not the command's pipes."""
    code = ("import os, multiprocessing; from fuse4seg.parallel import ordered_map; "
            "print(list(ordered_map(abs, [-1, -2], 2, progress=False))); "
            "from multiprocessing import forkserver; pid = forkserver._forkserver._forkserver_pid; "
            "print(os.readlink(f'/proc/{pid}/fd/1'), os.readlink(f'/proc/{pid}/fd/2'))")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "[1, 2]" and lines[1] == "/dev/null /dev/null", proc.stdout


def test_an_interrupted_pool_stops_its_running_items_at_once() -> None:
    """KeyboardInterrupt while ordered_map's workers run long items (60 s sleeps): the interrupt reaches the caller
    within seconds, not after the items end (a case can outlast the unwind a signal allows, cli.UNWIND_SECONDS), and
    no worker is left."""
    code = ("import os, signal, threading, time; from fuse4seg.parallel import ordered_map; "
            "threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT)).start(); t = time.monotonic()\n"
            "try:\n    list(ordered_map(time.sleep, [60, 60], 2, progress=False))\n"
            "except KeyboardInterrupt:\n    print(round(time.monotonic() - t, 1))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and float(out.strip()) < 15, (out, err)
    deadline = time.monotonic() + 10
    while True:  # the forkserver and any worker follow the script out (pool_guard), none survives it
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "processes of the interrupted pool are still alive"
        time.sleep(0.1)

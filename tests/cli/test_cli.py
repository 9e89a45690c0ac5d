"""The `mesaserve` command line, run as a user runs it, on a small random model."""
import os
import shutil
import subprocess
import tempfile
import unittest

import numpy as np

MESASERVE = os.environ["MESASERVE"]
MAKE_TEST_MODEL = os.environ["MAKE_TEST_MODEL"]
TESTDATA = os.environ["TESTDATA"]


def run(*args, check=True):
    proc = subprocess.run([MESASERVE, *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"mesaserve {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


class CliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="mesa_cli_")
        cls.model = os.path.join(cls.tmp, "model")
        subprocess.run([MAKE_TEST_MODEL, cls.model, os.path.join(TESTDATA, "tokenizer", "tiny.model")],
                       check=True)
        cls.bare = os.path.join(cls.tmp, "bare")  # no tokenizer.model
        subprocess.run([MAKE_TEST_MODEL, cls.bare], check=True)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_generate_is_deterministic_for_a_seed(self):
        args = ["generate", "--model", self.model, "--prompt", "The license", "--max-new-tokens", "20",
                "--seed", "7", "--temperature", "1.0"]
        a = run(*args).stdout
        b = run(*args).stdout
        self.assertEqual(a, b)
        self.assertTrue(a.startswith("The license"))
        self.assertGreater(len(a), len("The license\n"))
        c = run(*args[:-4], "--seed", "8", "--temperature", "1.0").stdout
        self.assertNotEqual(a, c)

    def test_generate_greedy_with_stats(self):
        proc = run("generate", "--model", self.model, "--prompt", "Hello", "--max-new-tokens", "8",
                   "--temperature", "0", "--stats", "--cg-mode", "fixed")
        self.assertIn("prefill:", proc.stderr)
        self.assertIn("decode:", proc.stderr)
        self.assertIn("mean 30.00 CG iterations", proc.stderr)

    def test_logits_prefill_and_decode_paths(self):
        ids = "1,5,17,42,99,3,7,200,150,11"
        out_p = os.path.join(self.tmp, "p.npy")
        out_d = os.path.join(self.tmp, "d.npy")
        run("logits", "--model", self.bare, "--token-ids", ids, "--cg-mode", "fixed", "--out", out_p)
        run("logits", "--model", self.bare, "--token-ids", ids, "--decode-from", "4", "--cg-mode", "fixed",
            "--out", out_d)
        p = np.load(out_p)
        d = np.load(out_d)
        self.assertEqual(p.shape, (10, 400))
        self.assertEqual(p.dtype, np.float32)
        np.testing.assert_array_equal(p[:4], d[:4])
        rel = np.sqrt(((p[4:] - d[4:]) ** 2).mean()) / np.sqrt((p[4:] ** 2).mean())
        self.assertLess(rel, 1e-2)
        self.assertGreater(float(np.abs(p).max()), 0.0)

    def test_logits_errors_name_the_value(self):
        proc = run("logits", "--model", self.bare, "--token-ids", "1,2,999", "--out",
                   os.path.join(self.tmp, "x.npy"), check=False)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("token id 999", proc.stderr)
        proc = run("logits", "--model", self.bare, "--token-ids", "1,2", "--decode-from", "5", "--out",
                   os.path.join(self.tmp, "x.npy"), check=False)
        self.assertIn("--decode-from 5", proc.stderr)
        proc = run("logits", "--model", self.bare, "--token-ids", "1,x", "--out", "y.npy", check=False)
        self.assertIn("'x' is not an integer", proc.stderr)
        proc = run("logits", "--model", self.bare, "--token-ids", "1", "--cg-mode", "fast", "--out", "y.npy",
                   check=False)
        self.assertIn("CG mode 'fast'", proc.stderr)
        proc = run("generate", "--model", self.bare, "--prompt", "x", check=False)
        self.assertIn("no tokenizer.model", proc.stderr)
        proc = run("generate", "--model", self.model, "--top-p", "1.5", check=False)
        self.assertIn("top_p = 1.5", proc.stderr)
        proc = run("generate", "--bogus", check=False)
        self.assertIn("unknown flag --bogus", proc.stderr)
        proc = run("frobnicate", check=False)
        self.assertEqual(proc.returncode, 2)

    def test_device_flag(self):
        # An unknown backend names the choices; `cpu` and the default `auto` (no GPU in CI)
        # give the same greedy tokens; `cuda` without a usable GPU is a clear error, whether
        # this binary has the CUDA backend (no device) or not (built without it).
        proc = run("generate", "--model", self.model, "--device", "gpu", check=False)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("--device 'gpu' is not one of auto, cpu, cuda", proc.stderr)
        proc = run("serve", "--model", self.model, "--device", "tpu", check=False)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("--device 'tpu' is not one of auto, cpu, cuda", proc.stderr)
        args = ("generate", "--model", self.model, "--prompt", "ab", "--max-new-tokens", "6",
                "--temperature", "0")
        cpu = run(*args, "--device", "cpu")
        auto = run(*args)
        if shutil.which("nvidia-smi") is None:
            self.assertEqual(cpu.stdout, auto.stdout)
            proc = run(*args, "--device", "cuda", check=False)
            self.assertNotEqual(proc.returncode, 0)
            self.assertRegex(proc.stderr, r"--device cuda: this mesaserve was built without the CUDA backend"
                                          r"|CUDA|cuda")

    def test_serve_rejects_timeouts_out_of_range(self):
        for flag, value in (("--drain-timeout", "-1"), ("--fatal-exit-after", "-2"),
                            ("--fatal-exit-after", "90000")):
            proc = run("serve", "--model", self.model, flag, value, check=False)
            self.assertEqual(proc.returncode, 1, proc.stderr)
            self.assertIn(f"{flag} {value} is outside [0, 86400]", proc.stderr)
        for value in ("0", "1001"):
            proc = run("serve", "--model", self.model, "--prefill-interval", value, check=False)
            self.assertEqual(proc.returncode, 1, proc.stderr)
            self.assertIn("prefill-interval", proc.stderr)
            self.assertIn(value, proc.stderr)

    def test_perplexity_reports_cg_statistics(self):
        text = os.path.join(self.tmp, "text.txt")
        with open(text, "w") as f:
            f.write("This is a small text for the perplexity command. " * 20)
        proc = run("perplexity", "--model", self.model, "--file", text, "--window", "64")
        self.assertRegex(proc.stdout, r"perplexity \d+\.\d+")
        self.assertIn("CG iterations per head-token", proc.stdout)
        self.assertNotIn("[###", proc.stderr)  # no progress bar when stderr is not a terminal

    def test_bench_engine_load_counts_every_token(self):
        # The engine-only baseline of docs/serving-benchmarks.md: closed-loop requests through the
        # serving engine, detokenized when the model has a tokenizer (as in the server).
        for model, kind in ((self.model, "detokenized"), (self.bare, "no tokenizer")):
            proc = run("bench", "--model", model, "--batches", "1", "--steps", "2", "--context", "4",
                       "--prefill-tokens", "8", "--copy-mb", "16", "--engine-concurrency", "1,3",
                       "--load-requests", "4", "--load-prompt-tokens", "5", "--load-new-tokens", "6")
            self.assertIn(f"engine load (prompt 5, 6 new tokens, closed loop, {kind})", proc.stdout)
            rows = {}
            for line in proc.stdout.splitlines():
                parts = line.split()
                if len(parts) == 5 and parts[0] in ("1", "3") and parts[1] == "4":
                    self.assertEqual(parts[4], "0", line)  # nothing shed in a closed loop
                    rows[parts[0]] = float(parts[3])
            self.assertEqual(sorted(rows), ["1", "3"], proc.stdout)
            for tokens_per_s in rows.values():
                self.assertGreater(tokens_per_s, 0.0)

    def test_bench_engine_load_open_loop(self):
        # --engine-rate: requests arrive on their own schedule; every one ends OK or is shed.
        proc = run("bench", "--model", self.model, "--batches", "1", "--steps", "2", "--context", "4",
                   "--prefill-tokens", "8", "--copy-mb", "16", "--engine-concurrency", "2",
                   "--engine-rate", "40", "--load-requests", "6", "--load-prompt-tokens", "5",
                   "--load-new-tokens", "6")
        self.assertIn("engine load (prompt 5, 6 new tokens, open loop at 40 requests/s, detokenized)",
                      proc.stdout)
        row = [line.split() for line in proc.stdout.splitlines()
               if len(line.split()) == 5 and line.split()[0] == "2"]
        self.assertEqual(len(row), 1, proc.stdout)
        ok, shed = int(row[0][1]), int(row[0][4])
        self.assertEqual(ok + shed, 6, proc.stdout)
        self.assertGreaterEqual(ok, 1)
        self.assertGreater(float(row[0][3]), 0.0)
        bad = run("bench", "--model", self.model, "--engine-concurrency", "2", "--engine-rate", "-1",
                  check=False)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("--engine-rate -1 is outside [0, 1e6]", bad.stderr)

    def test_help(self):
        for cmd in ("generate", "logits", "perplexity"):
            proc = run(cmd, "--help")
            self.assertIn("--model", proc.stdout)


if __name__ == "__main__":
    unittest.main()

"""What a multiplier lane costs in LUTs by its shape: Yosys on two standalone datapaths of four multipliers.

The engine's shape today (docs/rtl.md, "the MAC engine"): four lanes, each with its own 46-bit accumulator and
its own RND/SAT conversion to 24 bits. The shape the next step of issue 13 proposes (docs/architecture.md, "What
limits it"): one lane over four points of the reduction, the four products summed into one accumulator and one
conversion. The same 16 x 24-bit products (one DSP48E1 each) in both; only the arithmetic is counted (not the
writes, requests and selects that one output per four multipliers also saves in a kernel).

    python benchmarks/lane_shapes.py -> benchmarks/results/lane_shapes.json
"""

from __future__ import annotations

import datetime
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
N = 4  # multipliers in each datapath

# both: x 16 bits (frac 10), w 24 bits (frac 16), the accumulator 46 bits (frac 26), the result fixed<24,8>
# rounded half up at the 10 dropped bits and saturated
VERILOG = """
module lanes_apart #(parameter int N = 4) (input logic clk, input logic first,
    input logic [N*16-1:0] x, input logic [N*24-1:0] w, output logic [N*24-1:0] out);
  for (genvar l = 0; l < N; l++) begin : g
    logic signed [15:0] xr; logic signed [23:0] wr; logic signed [39:0] m, p; logic signed [45:0] acc, r;
    logic signed [29:0] q;
    always_ff @(posedge clk) begin
      xr <= x[l*16 +: 16]; wr <= w[l*24 +: 24]; m <= xr * wr; p <= m;
      acc <= (first ? 46'sd0 : acc) + 46'(p);
    end
    assign r = acc + 46'sd32768;
    assign q = r[45:16];
    always_ff @(posedge clk)
      out[l*24 +: 24] <= (q > 30'sd8388607) ? 24'h7fffff : (q < -30'sd8388608) ? 24'h800000 : q[23:0];
  end
endmodule

module lane_over_reduction #(parameter int N = 4) (input logic clk, input logic first,
    input logic [N*16-1:0] x, input logic [N*24-1:0] w, output logic [23:0] out);
  logic signed [39:0] m [N];
  logic signed [45:0] s, sq, acc, r;
  logic signed [29:0] q;
  for (genvar l = 0; l < N; l++) begin : g
    logic signed [15:0] xr; logic signed [23:0] wr; logic signed [39:0] mm;
    always_ff @(posedge clk) begin xr <= x[l*16 +: 16]; wr <= w[l*24 +: 24]; mm <= xr * wr; m[l] <= mm; end
  end
  always_comb begin s = '0; for (int l = 0; l < N; l++) s = s + 46'(m[l]); end
  always_ff @(posedge clk) begin sq <= s; acc <= (first ? 46'sd0 : acc) + sq; end
  assign r = acc + 46'sd32768;
  assign q = r[45:16];
  always_ff @(posedge clk) out <= (q > 30'sd8388607) ? 24'h7fffff : (q < -30'sd8388608) ? 24'h800000 : q[23:0];
endmodule
"""


def synthesize(top: str, folder: Path) -> dict:
    """Yosys ``synth_xilinx`` (the flow ``fx2fpga report`` uses) on one of the datapaths: its xc7 primitives."""
    import subprocess

    from fx2fpga.toolchains import yosys

    tool = yosys.find_yosys()
    src = folder / "lanes.sv"
    src.write_text(VERILOG)
    script = (f"read_verilog -sv lanes.sv; synth_xilinx -family xc7 -noiopad -flatten -top {top}; "
              f"tee -q -o {top}.json stat -json")
    subprocess.run([tool.exe, "-q", "-p", script], cwd=folder, check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)
    cells = yosys.primitive_cells(json.loads((folder / f"{top}.json").read_text()))
    res = yosys.count(cells, "xc7")
    return {"lut": res.lut, "ff": res.ff, "dsp": res.dsp, "carry4": cells.get("CARRY4", 0)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = {top: synthesize(top, Path(tmp)) for top in ("lanes_apart", "lane_over_reduction")}
    for top, r in rows.items():
        r["lut_per_multiplier"] = round(r["lut"] / N, 1)
        print(f"{top:20s} LUT {r['lut']:4d} FF {r['ff']:4d} DSP {r['dsp']} "
              f"({r['lut_per_multiplier']} LUT a multiplier)")
    result = {"about": __doc__.splitlines()[0], "multipliers": N, "designs": rows,
              "date": datetime.date.today().isoformat()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lane_shapes.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

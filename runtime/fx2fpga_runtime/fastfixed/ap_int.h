// fx2fpga csim: the fast stand-in for Xilinx's ap_int.h (see fastfixed.h; never part of an HLS project).
#include "fastfixed.h"

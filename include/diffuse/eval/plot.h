// A tiny rasterising line plotter with no dependencies: axes, ticks (linear or log), grid,
// legend and a built-in 5x7 bitmap font. For the per-t bpd terms plot and quality-vs-NFE sweeps.
// It only returns the picture; writing PNGs is image_io.h's job.
#pragma once

#include <torch/types.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace diffuse {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  bool operator==(const Rgb& o) const { return r == o.r && g == o.g && b == o.b; }
};

// The i-th colour of the default palette (cycled; none is white, grey or black, so series
// never blend into the background, grid or axes).
Rgb default_color(size_t i);

struct Series {
  std::string label;      // shown in the legend (empty: not listed)
  std::vector<double> x;  // empty: 0, 1, ..., y.size() - 1
  std::vector<double> y;
  std::optional<Rgb> color;  // default: default_color(index of the series)
  int line_width = 2;        // pixels
  bool markers = false;      // a small square at each point
};

struct PlotOptions {
  int64_t width = 640;
  int64_t height = 400;
  bool log_x = false;
  bool log_y = false;
  std::string title, x_label, y_label;
  bool legend = true;
  // Axis limits; NaN = from the data (linear axes get 5% padding). Points outside are clipped.
  double x_min = NAN, x_max = NAN, y_min = NAN, y_max = NAN;
};

// The plot as uint8 [3, height, width] (RGB, white background). Non-finite points, and points
// <= 0 on a log axis, break a series' line instead of failing. Text uses a 5x7 bitmap font with
// digits, upper- and lower-case letters and common punctuation; other characters draw as '?'.
torch::Tensor plot_lines(const std::vector<Series>& series, const PlotOptions& opts = {});

// A density picture of 2-D points: a size x size canvas over [-range, range]^2 where each pixel's
// darkness grows with the log of the points that fall in it (axes through the origin in grey).
// points: [N, 2]. Returns uint8 [3, size, size].
torch::Tensor plot_points(const torch::Tensor& points, int64_t size = 256, double range = 3.0);

}  // namespace diffuse

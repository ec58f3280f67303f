#include "diffuse/eval/plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace diffuse {

namespace {

// --- 5x7 bitmap font: 7 rows of 5 columns per glyph, '#' = ink ---------------------------------

constexpr int kGlyphW = 5, kGlyphH = 7, kAdvance = 6;

struct Glyph {
  char c;
  const char* rows;  // 35 characters, row-major
};

// clang-format off
const Glyph kFont[] = {
  {' ', "....." "....." "....." "....." "....." "....." "....."},
  {'0', ".###." "#...#" "#..##" "#.#.#" "##..#" "#...#" ".###."},
  {'1', "..#.." ".##.." "..#.." "..#.." "..#.." "..#.." ".###."},
  {'2', ".###." "#...#" "....#" "...#." "..#.." ".#..." "#####"},
  {'3', "#####" "...#." "..#.." "...#." "....#" "#...#" ".###."},
  {'4', "...#." "..##." ".#.#." "#..#." "#####" "...#." "...#."},
  {'5', "#####" "#...." "####." "....#" "....#" "#...#" ".###."},
  {'6', "..##." ".#..." "#...." "####." "#...#" "#...#" ".###."},
  {'7', "#####" "....#" "...#." "..#.." ".#..." ".#..." ".#..."},
  {'8', ".###." "#...#" "#...#" ".###." "#...#" "#...#" ".###."},
  {'9', ".###." "#...#" "#...#" ".####" "....#" "...#." ".##.."},
  {'A', ".###." "#...#" "#...#" "#####" "#...#" "#...#" "#...#"},
  {'B', "####." "#...#" "#...#" "####." "#...#" "#...#" "####."},
  {'C', ".###." "#...#" "#...." "#...." "#...." "#...#" ".###."},
  {'D', "###.." "#..#." "#...#" "#...#" "#...#" "#..#." "###.."},
  {'E', "#####" "#...." "#...." "####." "#...." "#...." "#####"},
  {'F', "#####" "#...." "#...." "####." "#...." "#...." "#...."},
  {'G', ".###." "#...#" "#...." "#.###" "#...#" "#...#" ".####"},
  {'H', "#...#" "#...#" "#...#" "#####" "#...#" "#...#" "#...#"},
  {'I', ".###." "..#.." "..#.." "..#.." "..#.." "..#.." ".###."},
  {'J', "..###" "...#." "...#." "...#." "...#." "#..#." ".##.."},
  {'K', "#...#" "#..#." "#.#.." "##..." "#.#.." "#..#." "#...#"},
  {'L', "#...." "#...." "#...." "#...." "#...." "#...." "#####"},
  {'M', "#...#" "##.##" "#.#.#" "#.#.#" "#...#" "#...#" "#...#"},
  {'N', "#...#" "#...#" "##..#" "#.#.#" "#..##" "#...#" "#...#"},
  {'O', ".###." "#...#" "#...#" "#...#" "#...#" "#...#" ".###."},
  {'P', "####." "#...#" "#...#" "####." "#...." "#...." "#...."},
  {'Q', ".###." "#...#" "#...#" "#...#" "#.#.#" "#..#." ".##.#"},
  {'R', "####." "#...#" "#...#" "####." "#.#.." "#..#." "#...#"},
  {'S', ".####" "#...." "#...." ".###." "....#" "....#" "####."},
  {'T', "#####" "..#.." "..#.." "..#.." "..#.." "..#.." "..#.."},
  {'U', "#...#" "#...#" "#...#" "#...#" "#...#" "#...#" ".###."},
  {'V', "#...#" "#...#" "#...#" "#...#" "#...#" ".#.#." "..#.."},
  {'W', "#...#" "#...#" "#...#" "#.#.#" "#.#.#" "#.#.#" ".#.#."},
  {'X', "#...#" "#...#" ".#.#." "..#.." ".#.#." "#...#" "#...#"},
  {'Y', "#...#" "#...#" ".#.#." "..#.." "..#.." "..#.." "..#.."},
  {'Z', "#####" "....#" "...#." "..#.." ".#..." "#...." "#####"},
  {'a', "....." "....." ".###." "....#" ".####" "#...#" ".####"},
  {'b', "#...." "#...." "#.##." "##..#" "#...#" "#...#" "####."},
  {'c', "....." "....." ".###." "#...." "#...." "#...#" ".###."},
  {'d', "....#" "....#" ".##.#" "#..##" "#...#" "#...#" ".####"},
  {'e', "....." "....." ".###." "#...#" "#####" "#...." ".###."},
  {'f', "..##." ".#..#" ".#..." "###.." ".#..." ".#..." ".#..."},
  {'g', "....." "....." ".####" "#...#" ".####" "....#" ".###."},
  {'h', "#...." "#...." "#.##." "##..#" "#...#" "#...#" "#...#"},
  {'i', "..#.." "....." ".##.." "..#.." "..#.." "..#.." ".###."},
  {'j', "...#." "....." "..##." "...#." "...#." "#..#." ".##.."},
  {'k', "#...." "#...." "#..#." "#.#.." "##..." "#.#.." "#..#."},
  {'l', ".##.." "..#.." "..#.." "..#.." "..#.." "..#.." ".###."},
  {'m', "....." "....." "##.#." "#.#.#" "#.#.#" "#...#" "#...#"},
  {'n', "....." "....." "#.##." "##..#" "#...#" "#...#" "#...#"},
  {'o', "....." "....." ".###." "#...#" "#...#" "#...#" ".###."},
  {'p', "....." "....." "####." "#...#" "####." "#...." "#...."},
  {'q', "....." "....." ".####" "#...#" ".####" "....#" "....#"},
  {'r', "....." "....." "#.##." "##..#" "#...." "#...." "#...."},
  {'s', "....." "....." ".###." "#...." ".###." "....#" "####."},
  {'t', ".#..." ".#..." "###.." ".#..." ".#..." ".#..#" "..##."},
  {'u', "....." "....." "#...#" "#...#" "#...#" "#..##" ".##.#"},
  {'v', "....." "....." "#...#" "#...#" "#...#" ".#.#." "..#.."},
  {'w', "....." "....." "#...#" "#...#" "#.#.#" "#.#.#" ".#.#."},
  {'x', "....." "....." "#...#" ".#.#." "..#.." ".#.#." "#...#"},
  {'y', "....." "....." "#...#" "#...#" ".####" "....#" ".###."},
  {'z', "....." "....." "#####" "...#." "..#.." ".#..." "#####"},
  {'.', "....." "....." "....." "....." "....." ".##.." ".##.."},
  {',', "....." "....." "....." "....." ".##.." "..#.." ".#..."},
  {'-', "....." "....." "....." ".###." "....." "....." "....."},
  {'+', "....." "..#.." "..#.." "#####" "..#.." "..#.." "....."},
  {'_', "....." "....." "....." "....." "....." "....." "#####"},
  {':', "....." ".##.." ".##.." "....." ".##.." ".##.." "....."},
  {'=', "....." "....." "#####" "....." "#####" "....." "....."},
  {'(', "...#." "..#.." ".#..." ".#..." ".#..." "..#.." "...#."},
  {')', ".#..." "..#.." "...#." "...#." "...#." "..#.." ".#..."},
  {'[', ".###." ".#..." ".#..." ".#..." ".#..." ".#..." ".###."},
  {']', ".###." "...#." "...#." "...#." "...#." "...#." ".###."},
  {'/', "....." "....#" "...#." "..#.." ".#..." "#...." "....."},
  {'%', "##..." "##..#" "...#." "..#.." ".#..." "#..##" "...##"},
  {'*', "....." "..#.." "#.#.#" ".###." "#.#.#" "..#.." "....."},
  {'<', "...#." "..#.." ".#..." "#...." ".#..." "..#.." "...#."},
  {'>', ".#..." "..#.." "...#." "....#" "...#." "..#.." ".#..."},
  {'^', "..#.." ".#.#." "#...#" "....." "....." "....." "....."},
  {'|', "..#.." "..#.." "..#.." "..#.." "..#.." "..#.." "..#.."},
  {'#', ".#.#." ".#.#." "#####" ".#.#." "#####" ".#.#." ".#.#."},
  {'!', "..#.." "..#.." "..#.." "..#.." "..#.." "....." "..#.."},
  {'\'', "..#.." "..#.." ".#..." "....." "....." "....." "....."},
  {'?', ".###." "#...#" "....#" "...#." "..#.." "....." "..#.."},
};
// clang-format on

const char* glyph(char c) {
  static const std::array<const char*, 128> table = [] {
    std::array<const char*, 128> t{};
    for (const auto& g : kFont) t[static_cast<unsigned char>(g.c)] = g.rows;
    return t;
  }();
  const auto u = static_cast<unsigned char>(c);
  const char* g = u < 128 ? table[u] : nullptr;
  return g ? g : table[static_cast<unsigned char>('?')];
}

int text_width(const std::string& s) { return s.empty() ? 0 : static_cast<int>(s.size()) * kAdvance - 1; }

// --- Canvas -----------------------------------------------------------------------------------

const Rgb kWhite{255, 255, 255}, kBlack{0, 0, 0}, kGrid{226, 226, 226}, kFrame{90, 90, 90};

class Canvas {
 public:
  Canvas(int w, int h) : w_(w), h_(h), px_(static_cast<size_t>(3) * w * h, 255) { reset_clip(); }

  void set_clip(int x0, int y0, int x1, int y1) { cx0_ = x0, cy0_ = y0, cx1_ = x1, cy1_ = y1; }
  void reset_clip() { set_clip(0, 0, w_ - 1, h_ - 1); }

  void set(int x, int y, Rgb c) {
    if (x < cx0_ || x > cx1_ || y < cy0_ || y > cy1_) return;
    const size_t plane = static_cast<size_t>(w_) * h_, i = static_cast<size_t>(y) * w_ + x;
    px_[i] = c.r;
    px_[plane + i] = c.g;
    px_[2 * plane + i] = c.b;
  }
  void fill(int x0, int y0, int x1, int y1, Rgb c) {
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x) set(x, y, c);
  }
  void rect(int x0, int y0, int x1, int y1, Rgb c) {
    fill(x0, y0, x1, y0, c);
    fill(x0, y1, x1, y1, c);
    fill(x0, y0, x0, y1, c);
    fill(x1, y0, x1, y1, c);
  }
  // A square brush of `width` pixels centred on (x, y).
  void dot(int x, int y, int width, Rgb c) {
    const int lo = -(width - 1) / 2, hi = width / 2;
    fill(x + lo, y + lo, x + hi, y + hi, c);
  }
  // Bresenham between integer pixels.
  void line(int x0, int y0, int x1, int y1, int width, Rgb c) {
    const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
    const int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    for (;;) {
      dot(x0, y0, width, c);
      if (x0 == x1 && y0 == y1) break;
      const int e2 = 2 * err;
      if (e2 >= dy) err += dy, x0 += sx;
      if (e2 <= dx) err += dx, y0 += sy;
    }
  }
  // Text with its top-left corner at (x, y).
  void text(int x, int y, const std::string& s, Rgb c) {
    for (size_t k = 0; k < s.size(); ++k) {
      const char* g = glyph(s[k]);
      for (int gy = 0; gy < kGlyphH; ++gy)
        for (int gx = 0; gx < kGlyphW; ++gx)
          if (g[gy * kGlyphW + gx] == '#') set(x + static_cast<int>(k) * kAdvance + gx, y + gy, c);
    }
  }
  // Text rotated 90 degrees anticlockwise (reading upwards); (x, y) is its bottom-left corner.
  void text_up(int x, int y, const std::string& s, Rgb c) {
    for (size_t k = 0; k < s.size(); ++k) {
      const char* g = glyph(s[k]);
      for (int gy = 0; gy < kGlyphH; ++gy)
        for (int gx = 0; gx < kGlyphW; ++gx)
          if (g[gy * kGlyphW + gx] == '#') set(x + gy, y - (static_cast<int>(k) * kAdvance + gx), c);
    }
  }

  torch::Tensor tensor() const {
    return torch::from_blob(const_cast<uint8_t*>(px_.data()), {3, h_, w_}, torch::kUInt8).clone();
  }

 private:
  int w_, h_;
  std::vector<uint8_t> px_;  // planar RGB, [3, H, W]
  int cx0_ = 0, cy0_ = 0, cx1_ = 0, cy1_ = 0;
};

// --- Axes -------------------------------------------------------------------------------------

struct Axis {
  bool log = false;
  double lo = 0, hi = 1;      // in transformed units (log10 for a log axis)
  double p_lo = 0, p_hi = 1;  // pixel positions of lo and hi

  double transform(double v) const {
    if (!std::isfinite(v)) return NAN;
    if (log) return v > 0 ? std::log10(v) : NAN;
    return v;
  }
  double to_pixel_t(double tv) const { return p_lo + (tv - lo) / (hi - lo) * (p_hi - p_lo); }
};

void set_range(Axis& a, const std::vector<Series>& series, bool is_x, double user_min, double user_max) {
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& s : series)
    for (size_t i = 0; i < s.y.size(); ++i) {
      const double v = a.transform(is_x ? (s.x.empty() ? static_cast<double>(i) : s.x[i]) : s.y[i]);
      if (std::isnan(v)) continue;
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  if (!(lo <= hi)) lo = 0, hi = 1;  // no drawable data
  if (lo == hi) {
    const double d = a.log ? 0.5 : (lo == 0 ? 1.0 : 0.1 * std::abs(lo));
    lo -= d, hi += d;
  } else {
    const double pad = 0.05 * (hi - lo);
    lo -= pad, hi += pad;
  }
  const double ulo = a.transform(user_min), uhi = a.transform(user_max);
  if (std::isfinite(ulo)) lo = ulo;
  if (std::isfinite(uhi)) hi = uhi;
  if (!(hi > lo))
    throw std::invalid_argument(
        fmt::format("plot_lines: empty {} range [{}, {}]", is_x ? "x" : "y", user_min, user_max));
  a.lo = lo, a.hi = hi;
}

double nice_step(double raw) {
  const double e = std::floor(std::log10(raw)), f = raw / std::pow(10.0, e);
  const double nf = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
  return nf * std::pow(10.0, e);
}

// "0", "0.25", "120", "1e-5", "2.5e6": fixed for moderate magnitudes, else a short exponent form.
std::string number_label(double v, double resolution) {
  if (std::abs(v) < 1e-12 * std::max(1.0, resolution)) return "0";
  const double a = std::abs(v);
  if (a >= 1e-3 && a < 1e5) {
    const int decimals = std::clamp(static_cast<int>(-std::floor(std::log10(resolution) + 1e-9)), 0, 6);
    return fmt::format("{:.{}f}", v, decimals);
  }
  const int e = static_cast<int>(std::floor(std::log10(a) + 1e-12));
  double m = v / std::pow(10.0, e);
  std::string ms = fmt::format("{:.2g}", m);
  if (ms == "10" || ms == "-10") return fmt::format("{}e{}", v < 0 ? "-1" : "1", e + 1);
  return fmt::format("{}e{}", ms, e);
}

struct Tick {
  double t;  // transformed position
  std::string label;
};

std::vector<Tick> make_ticks(const Axis& a, double pixels, double spacing) {
  std::vector<Tick> ticks;
  const int target = std::max(2, static_cast<int>(pixels / spacing));
  if (a.log) {
    const int d0 = static_cast<int>(std::ceil(a.lo - 1e-9)), d1 = static_cast<int>(std::floor(a.hi + 1e-9));
    if (a.hi - a.lo >= 3.0) {  // several decades: powers of ten only
      const int stride = std::max(1, (d1 - d0 + 1 + target - 1) / target);
      for (int d = d0; d <= d1; ++d)
        if ((d - d0) % stride == 0)
          ticks.push_back({static_cast<double>(d), number_label(std::pow(10.0, d), std::pow(10.0, d))});
      return ticks;
    }
    // A few decades or less: 1, 2, 5 multiples.
    for (int d = static_cast<int>(std::floor(a.lo)); d <= static_cast<int>(std::ceil(a.hi)); ++d)
      for (double m : {1.0, 2.0, 5.0}) {
        const double v = m * std::pow(10.0, d), t = std::log10(v);
        if (t >= a.lo - 1e-9 && t <= a.hi + 1e-9) ticks.push_back({t, number_label(v, std::pow(10.0, d))});
      }
    return ticks;
  }
  const double step = nice_step((a.hi - a.lo) / target);
  const auto k0 = static_cast<int64_t>(std::ceil(a.lo / step - 1e-9)),
             k1 = static_cast<int64_t>(std::floor(a.hi / step + 1e-9));
  for (int64_t k = k0; k <= k1; ++k) {
    const double v = static_cast<double>(k) * step;
    ticks.push_back({v, number_label(v, step)});
  }
  return ticks;
}

// Liang-Barsky: clip the segment to [x0, x1] x [y0, y1]; false when nothing is left.
bool clip_segment(double& ax, double& ay, double& bx, double& by, double x0, double y0, double x1, double y1) {
  double t0 = 0, t1 = 1;
  const double dx = bx - ax, dy = by - ay;
  const double p[4] = {-dx, dx, -dy, dy}, q[4] = {ax - x0, x1 - ax, ay - y0, y1 - ay};
  for (int i = 0; i < 4; ++i) {
    if (p[i] == 0) {
      if (q[i] < 0) return false;
      continue;
    }
    const double r = q[i] / p[i];
    if (p[i] < 0) t0 = std::max(t0, r);
    else t1 = std::min(t1, r);
    if (t0 > t1) return false;
  }
  const double nax = ax + t0 * dx, nay = ay + t0 * dy;
  bx = ax + t1 * dx, by = ay + t1 * dy;
  ax = nax, ay = nay;
  return true;
}

int round_px(double v) { return static_cast<int>(std::lround(v)); }

}  // namespace

Rgb default_color(size_t i) {
  static const Rgb palette[] = {{31, 119, 180}, {255, 127, 14},  {44, 160, 44},  {214, 39, 40}, {148, 103, 189},
                                {140, 86, 75},  {227, 119, 194}, {188, 189, 34}, {23, 190, 207}};
  return palette[i % (sizeof(palette) / sizeof(palette[0]))];
}

torch::Tensor plot_lines(const std::vector<Series>& series, const PlotOptions& opts) {
  if (opts.width < 120 || opts.height < 80 || opts.width > 16384 || opts.height > 16384)
    throw std::invalid_argument(
        fmt::format("plot_lines: size {}x{} is outside 120x80 .. 16384x16384", opts.width, opts.height));
  for (const auto& s : series) {
    if (!s.x.empty() && s.x.size() != s.y.size())
      throw std::invalid_argument(
          fmt::format("plot_lines: series '{}' has {} x values and {} y values", s.label, s.x.size(), s.y.size()));
    if (s.line_width < 1 || s.line_width > 32)
      throw std::invalid_argument(fmt::format("plot_lines: series '{}' has line width {}", s.label, s.line_width));
  }
  const int W = static_cast<int>(opts.width), H = static_cast<int>(opts.height);
  Canvas c(W, H);

  Axis xa, ya;
  xa.log = opts.log_x;
  ya.log = opts.log_y;
  set_range(xa, series, true, opts.x_min, opts.x_max);
  set_range(ya, series, false, opts.y_min, opts.y_max);

  // Layout: margins fit the title, tick labels and axis labels.
  const int pad = 6, tick_len = 4;
  const int top = pad + (opts.title.empty() ? 4 : kGlyphH + pad);
  const int bottom = tick_len + 3 + kGlyphH + pad + (opts.x_label.empty() ? 0 : kGlyphH + 4);
  const int py0 = top, py1 = H - 1 - bottom;
  ya.p_lo = py1, ya.p_hi = py0;
  const auto yticks = make_ticks(ya, py1 - py0, 40.0);
  int label_w = 0;
  for (const auto& t : yticks) label_w = std::max(label_w, text_width(t.label));
  const int left = pad + (opts.y_label.empty() ? 0 : kGlyphH + 5) + label_w + 3 + tick_len;
  const int right = 14;
  const int px0 = left, px1 = W - 1 - right;
  if (px1 - px0 < 20 || py1 - py0 < 20)
    throw std::invalid_argument(fmt::format("plot_lines: {}x{} leaves no room for the plot area", W, H));
  xa.p_lo = px0, xa.p_hi = px1;
  const auto xticks = make_ticks(xa, px1 - px0, 80.0);

  // Grid, then ticks and labels.
  for (const auto& t : xticks) {
    const int x = round_px(xa.to_pixel_t(t.t));
    c.fill(x, py0 + 1, x, py1 - 1, kGrid);
    c.fill(x, py1 + 1, x, py1 + tick_len, kBlack);
    c.text(x - text_width(t.label) / 2, py1 + tick_len + 3, t.label, kBlack);
  }
  for (const auto& t : yticks) {
    const int y = round_px(ya.to_pixel_t(t.t));
    c.fill(px0 + 1, y, px1 - 1, y, kGrid);
    c.fill(px0 - tick_len, y, px0 - 1, y, kBlack);
    c.text(px0 - tick_len - 3 - text_width(t.label), y - kGlyphH / 2, t.label, kBlack);
  }
  if (!opts.title.empty()) c.text((px0 + px1) / 2 - text_width(opts.title) / 2, pad, opts.title, kBlack);
  if (!opts.x_label.empty())
    c.text((px0 + px1) / 2 - text_width(opts.x_label) / 2, H - pad - kGlyphH, opts.x_label, kBlack);
  if (!opts.y_label.empty()) c.text_up(pad, (py0 + py1) / 2 + text_width(opts.y_label) / 2, opts.y_label, kBlack);

  // Series, clipped to the inside of the frame.
  c.set_clip(px0 + 1, py0 + 1, px1 - 1, py1 - 1);
  for (size_t si = 0; si < series.size(); ++si) {
    const auto& s = series[si];
    const Rgb col = s.color.value_or(default_color(si));
    bool have_prev = false;
    double prev_x = 0, prev_y = 0;
    for (size_t i = 0; i < s.y.size(); ++i) {
      const double tx = xa.transform(s.x.empty() ? static_cast<double>(i) : s.x[i]);
      const double ty = ya.transform(s.y[i]);
      if (std::isnan(tx) || std::isnan(ty)) {
        have_prev = false;  // a gap in the line
        continue;
      }
      const double x = xa.to_pixel_t(tx), y = ya.to_pixel_t(ty);
      if (have_prev) {
        double ax = prev_x, ay = prev_y, bx = x, by = y;
        if (clip_segment(ax, ay, bx, by, px0, py0, px1, py1))
          c.line(round_px(ax), round_px(ay), round_px(bx), round_px(by), s.line_width, col);
      } else if (x >= px0 && x <= px1 && y >= py0 && y <= py1) {
        c.dot(round_px(x), round_px(y), s.line_width, col);  // an isolated point still shows
      }
      if (s.markers && x >= px0 && x <= px1 && y >= py0 && y <= py1)
        c.dot(round_px(x), round_px(y), s.line_width + 3, col);
      have_prev = true, prev_x = x, prev_y = y;
    }
  }
  c.reset_clip();
  c.rect(px0, py0, px1, py1, kBlack);

  // Legend in the top-right corner of the plot area.
  if (opts.legend) {
    std::vector<size_t> shown;
    int lw = 0;
    for (size_t si = 0; si < series.size(); ++si)
      if (!series[si].label.empty()) shown.push_back(si), lw = std::max(lw, text_width(series[si].label));
    if (!shown.empty()) {
      const int row_h = kGlyphH + 5, swatch = 18;
      const int bw = 5 + swatch + 5 + lw + 6, bh = static_cast<int>(shown.size()) * row_h + 6;
      const int bx = std::max(px0 + 2, px1 - 5 - bw), by = py0 + 5;
      c.set_clip(px0 + 1, py0 + 1, px1 - 1, py1 - 1);
      c.fill(bx, by, bx + bw, by + bh, kWhite);
      c.rect(bx, by, bx + bw, by + bh, kFrame);
      for (size_t k = 0; k < shown.size(); ++k) {
        const auto& s = series[shown[k]];
        const Rgb col = s.color.value_or(default_color(shown[k]));
        const int cy = by + 4 + static_cast<int>(k) * row_h + kGlyphH / 2;
        c.line(bx + 5, cy, bx + 5 + swatch, cy, std::min(s.line_width, 3), col);
        c.text(bx + 5 + swatch + 5, cy - kGlyphH / 2, s.label, kBlack);
      }
      c.reset_clip();
    }
  }
  return c.tensor();
}

torch::Tensor plot_points(const torch::Tensor& points, int64_t size, double range) {
  if (points.dim() != 2 || points.size(1) != 2) throw std::invalid_argument("plot_points: expected [N, 2] points");
  if (size < 8 || !(range > 0)) throw std::invalid_argument("plot_points: bad size or range");
  auto p = points.to(torch::kCPU, torch::kFloat64).contiguous();
  const double* d = p.data_ptr<double>();
  std::vector<double> counts(static_cast<size_t>(size * size), 0.0);
  for (int64_t i = 0; i < p.size(0); ++i) {
    const double x = d[2 * i], y = d[2 * i + 1];
    const auto px = static_cast<int64_t>(std::floor((x + range) / (2 * range) * size));
    const auto py = static_cast<int64_t>(std::floor((range - y) / (2 * range) * size));  // y up
    if (px >= 0 && px < size && py >= 0 && py < size) counts[static_cast<size_t>(py * size + px)] += 1.0;
  }
  const double peak = std::log1p(*std::max_element(counts.begin(), counts.end()));
  auto img = torch::full({3, size, size}, 255, torch::kUInt8);
  auto a = img.accessor<uint8_t, 3>();
  const int64_t mid = size / 2;
  for (int64_t k = 0; k < size; ++k)
    for (int64_t c = 0; c < 3; ++c) a[c][mid][k] = a[c][k][mid] = 220;  // axes
  for (int64_t y = 0; y < size; ++y)
    for (int64_t x = 0; x < size; ++x) {
      const double n = counts[static_cast<size_t>(y * size + x)];
      if (n <= 0) continue;
      // Dark blue, stronger with log density so sparse regions stay visible.
      const double t = peak > 0 ? 0.35 + 0.65 * std::log1p(n) / peak : 1.0;
      a[0][y][x] = static_cast<uint8_t>(255 - t * 225);
      a[1][y][x] = static_cast<uint8_t>(255 - t * 185);
      a[2][y][x] = static_cast<uint8_t>(255 - t * 75);
    }
  return img;
}

}  // namespace diffuse

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>

#include "diffuse/eval/plot.h"

using namespace diffuse;

namespace {

struct Pixels {
  std::vector<int> xs, ys;
};

// Every pixel of exactly colour c.
Pixels pixels_of(const torch::Tensor& img, Rgb c) {
  Pixels p;
  auto a = img.accessor<uint8_t, 3>();
  for (int y = 0; y < img.size(1); ++y)
    for (int x = 0; x < img.size(2); ++x)
      if (a[0][y][x] == c.r && a[1][y][x] == c.g && a[2][y][x] == c.b) p.xs.push_back(x), p.ys.push_back(y);
  return p;
}

// Per column, the mean row of colour-c pixels; then the worst residual of a least-squares line
// through those centres, and its slope.
struct LineFit {
  double slope, max_residual;
  int columns;
};
LineFit fit_centres(const Pixels& p) {
  std::map<int, std::pair<double, int>> col;
  for (size_t i = 0; i < p.xs.size(); ++i) col[p.xs[i]].first += p.ys[i], col[p.xs[i]].second++;
  std::vector<double> X, Y;
  for (auto& [x, s] : col) X.push_back(x), Y.push_back(s.first / s.second);
  const double n = static_cast<double>(X.size());
  double mx = 0, my = 0;
  for (size_t i = 0; i < X.size(); ++i) mx += X[i] / n, my += Y[i] / n;
  double sxy = 0, sxx = 0;
  for (size_t i = 0; i < X.size(); ++i) sxy += (X[i] - mx) * (Y[i] - my), sxx += (X[i] - mx) * (X[i] - mx);
  const double slope = sxy / sxx;
  double worst = 0;
  for (size_t i = 0; i < X.size(); ++i) worst = std::max(worst, std::abs(Y[i] - (my + slope * (X[i] - mx))));
  return {slope, worst, static_cast<int>(X.size())};
}

const Rgb kRed{220, 20, 30}, kBlue{20, 40, 200};

}  // namespace

TEST(EvalPlot, DrawsAxesAndAHorizontalLine) {
  PlotOptions o;
  o.width = 300, o.height = 200;
  o.legend = false;
  Series s;
  s.x = {0, 1, 2, 3};
  s.y = {2, 2, 2, 2};
  s.color = kRed;
  auto img = plot_lines({s}, o);
  ASSERT_EQ(img.sizes(), (std::vector<int64_t>{3, 200, 300}));
  ASSERT_EQ(img.scalar_type(), torch::kUInt8);
  auto red = pixels_of(img, kRed);
  ASSERT_FALSE(red.xs.empty());
  // A 2-pixel-wide horizontal band across most of the width.
  EXPECT_LE(*std::max_element(red.ys.begin(), red.ys.end()) - *std::min_element(red.ys.begin(), red.ys.end()), 1);
  EXPECT_GT(*std::max_element(red.xs.begin(), red.xs.end()) - *std::min_element(red.xs.begin(), red.xs.end()), 180);
  // Black axes and tick labels exist; most of the picture is white background.
  EXPECT_GT(pixels_of(img, Rgb{0, 0, 0}).xs.size(), 500u);
  EXPECT_GT(pixels_of(img, Rgb{255, 255, 255}).xs.size(), 300u * 200u / 2);
}

// y = x is a straight falling line of pixels (rows grow downwards); y = 10^x is straight only on
// a log-y axis.
TEST(EvalPlot, LinearAndLogAxesMapStraightLines) {
  PlotOptions o;
  o.width = 320, o.height = 240;
  o.legend = false;
  Series diag;
  diag.y = {0, 1, 2, 3, 4};  // x defaults to 0..4
  diag.color = kRed;
  auto fit = fit_centres(pixels_of(plot_lines({diag}, o), kRed));
  EXPECT_GT(fit.columns, 150);
  EXPECT_LT(fit.slope, -0.3);
  EXPECT_LT(fit.max_residual, 1.5);

  Series exp10;
  for (int i = 0; i <= 4; ++i) exp10.x.push_back(i), exp10.y.push_back(std::pow(10.0, i));
  exp10.color = kBlue;
  auto linear = fit_centres(pixels_of(plot_lines({exp10}, o), kBlue));
  EXPECT_GT(linear.max_residual, 20.0);  // strongly curved on a linear axis
  o.log_y = true;
  auto logy = fit_centres(pixels_of(plot_lines({exp10}, o), kBlue));
  EXPECT_LT(logy.slope, -0.3);
  EXPECT_LT(logy.max_residual, 1.5);
}

// A NaN breaks the line; points <= 0 on a log axis do the same instead of failing.
TEST(EvalPlot, NonFiniteValuesLeaveAGap) {
  PlotOptions o;
  o.width = 300, o.height = 200;
  o.legend = false;
  o.log_y = true;
  Series s;
  s.y = {1, 1, NAN, 0.0, 1, 1};
  s.color = kRed;
  auto red = pixels_of(plot_lines({s}, o), kRed);
  ASSERT_FALSE(red.xs.empty());
  std::vector<int> cols(red.xs);
  std::sort(cols.begin(), cols.end());
  cols.erase(std::unique(cols.begin(), cols.end()), cols.end());
  int widest_gap = 0;
  for (size_t i = 1; i < cols.size(); ++i) widest_gap = std::max(widest_gap, cols[i] - cols[i - 1]);
  EXPECT_GT(widest_gap, 60);  // the two missing points span 3 of 5 x-intervals
}

// Two series in their own colours; the legend adds their labels in black text.
TEST(EvalPlot, LegendAndDefaultColours) {
  PlotOptions o;
  o.width = 400, o.height = 260;
  o.title = "bpd per t";
  o.x_label = "t";
  o.y_label = "vb_bpd";
  Series a, b;
  a.label = "L_t (e-3)";
  a.y = {5, 4, 3, 2, 1};
  b.label = "x0_mse";
  b.y = {1, 2, 3, 4, 5};
  auto with = plot_lines({a, b}, o);
  EXPECT_GT(pixels_of(with, default_color(0)).xs.size(), 100u);
  EXPECT_GT(pixels_of(with, default_color(1)).xs.size(), 100u);
  EXPECT_FALSE(default_color(0) == default_color(1));
  o.legend = false;
  auto without = plot_lines({a, b}, o);
  EXPECT_GT(pixels_of(with, Rgb{0, 0, 0}).xs.size(), pixels_of(without, Rgb{0, 0, 0}).xs.size() + 40);
  PlotOptions tiny;
  tiny.width = 10, tiny.height = 10;
  EXPECT_THROW(plot_lines({a}, tiny), std::invalid_argument);
  Series bad;
  bad.x = {1, 2};
  bad.y = {1};
  EXPECT_THROW(plot_lines({bad}, PlotOptions{}), std::invalid_argument);
  // An empty plot still has its axes.
  EXPECT_GT(pixels_of(plot_lines({}, PlotOptions{}), Rgb{0, 0, 0}).xs.size(), 100u);
}

TEST(PlotPoints, DarkensExactlyThePixelsWherePointsFall) {
  // Two clusters: 100 points at (1, 1) and one at (-2, -2); one point outside the range.
  auto pts = torch::cat({torch::full({100, 2}, 1.0), torch::full({1, 2}, -2.0), torch::full({1, 2}, 10.0)});
  auto img = diffuse::plot_points(pts, 64, 3.0);
  ASSERT_EQ(img.sizes(), (std::vector<int64_t>{3, 64, 64}));
  // (1, 1) -> column floor(4/6*64) = 42, row floor(2/6*64) = 21 (y grows upwards).
  const int dense = img[0][21][42].item<int>(), sparse = img[0][53][10].item<int>();
  EXPECT_LT(dense, sparse);                  // more points, darker
  EXPECT_LT(sparse, 255);                    // a single point still shows
  EXPECT_EQ(img[0][5][5].item<int>(), 255);  // empty background stays white
  // Only those two pixels (and the grey axes) are non-white.
  auto non_white = (img[0] < 200).sum().item<int64_t>();
  EXPECT_EQ(non_white, 2);
}

// Config <-> YAML through one table of fields. Each entry (key path, member, rule, help) drives
// parsing, --set overrides, dumping, per-field validation and the reference in docs/config.md,
// so a new key is one line in build_table().
#include "diffuse/config.h"

#include <fmt/format.h>
// GCC 12 reports false -Wdangling-pointer warnings inside yaml-cpp 0.7's inline code.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#include <yaml-cpp/yaml.h>
#pragma GCC diagnostic pop
#else
#include <yaml-cpp/yaml.h>
#endif

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>

#include "diffuse/error.h"
#include "diffuse/eval/evaluator.h"
#include "diffuse/models/unet.h"
#include "diffuse/precision.h"
#include "diffuse/samplers/registry.h"
#include "diffuse/samplers/sigma_schedule.h"

namespace diffuse {
namespace {

// A bad value; the message says what was expected, the caller adds where and which key.
struct ValueError {
  std::string message;
};

// ---------------------------------------------------------------------------------------------
// Suggestions for misspelt names.

// Optimal string alignment distance: Levenshtein plus adjacent transpositions ("trian").
size_t edit_distance(const std::string& a, const std::string& b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[n][m];
}

// The candidate closest to `word`, or "" when none is close enough to be a likely typo.
std::string closest(const std::string& word, const std::vector<std::string>& candidates) {
  const size_t allowed = word.size() <= 4 ? 1 : word.size() <= 8 ? 2 : 3;
  std::string best;
  size_t best_d = allowed + 1;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  return best;
}

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  const std::string c = closest(word, candidates);
  return c.empty() ? std::string() : "; did you mean '" + c + "'?";
}

// ---------------------------------------------------------------------------------------------
// Reading and writing one value. Read functions throw ValueError; write functions give YAML
// flow text that the read function turns back into the same value.

std::string describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null: return "nothing";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a map";
    default: return "'" + n.Scalar() + "'";
  }
}

const std::string& scalar(const YAML::Node& n, const char* expected) {
  if (!n.IsScalar()) throw ValueError{fmt::format("expected {}, got {}", expected, describe(n))};
  return n.Scalar();
}

// Double-quoted YAML: exact for any string (escapes for quotes, backslashes, control bytes).
std::string quote(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
        else out += ch;
    }
  }
  return out + "\"";
}

template <class T, class = void>
struct Codec;

template <class I>
struct Codec<I, std::enable_if_t<std::is_integral_v<I> && !std::is_same_v<I, bool>>> {
  static std::string type() { return std::is_signed_v<I> ? "integer" : "integer >= 0"; }
  static I read(const YAML::Node& n) {
    const char* expected = std::is_signed_v<I> ? "an integer" : "an integer >= 0";
    const std::string& s = scalar(n, expected);
    const char* b = s.data();
    const char* e = b + s.size();
    if (b != e && *b == '+') ++b;
    // from_chars takes no '+' and, for unsigned types, no '-'.
    const bool starts_ok =
        b != e && (std::isdigit(static_cast<unsigned char>(*b)) || (std::is_signed_v<I> && *b == '-'));
    I v{};
    std::from_chars_result r{b, std::errc::invalid_argument};
    if (starts_ok) r = std::from_chars(b, e, v);
    if (r.ec == std::errc::result_out_of_range)
      throw ValueError{fmt::format("'{}' is out of range for a 64-bit integer", s)};
    if (r.ec != std::errc() || r.ptr != e) throw ValueError{fmt::format("expected {}, got '{}'", expected, s)};
    return v;
  }
  static std::string write(I v) { return fmt::format("{}", v); }
};

template <>
struct Codec<double> {
  static std::string type() { return "number"; }
  static double read(const YAML::Node& n) {
    const std::string& s = scalar(n, "a number");
    const char* b = s.data();
    const char* e = b + s.size();
    if (b != e && *b == '+') ++b;
    const bool starts_ok = b != e && (std::isdigit(static_cast<unsigned char>(*b)) || *b == '-' || *b == '.');
    double v = 0;
    std::from_chars_result r{b, std::errc::invalid_argument};
    if (starts_ok) r = std::from_chars(b, e, v);
    if (r.ec != std::errc() || r.ptr != e) throw ValueError{fmt::format("expected a number, got '{}'", s)};
    if (!std::isfinite(v)) throw ValueError{fmt::format("expected a finite number, got '{}'", s)};
    return v;
  }
  // fmt's "{}" is the shortest text that reads back to the same double.
  static std::string write(double v) { return fmt::format("{}", v); }
};

template <>
struct Codec<bool> {
  static std::string type() { return "bool"; }
  static bool read(const YAML::Node& n) {
    const std::string& s = scalar(n, "true or false");
    std::string l = s;
    std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (l == "true" || l == "yes" || l == "on") return true;
    if (l == "false" || l == "no" || l == "off") return false;
    throw ValueError{fmt::format("expected true or false, got '{}'", s)};
  }
  static std::string write(bool v) { return v ? "true" : "false"; }
};

template <>
struct Codec<std::string> {
  static std::string type() { return "string"; }
  static std::string read(const YAML::Node& n) {
    if (n.IsNull()) return "";  // `key:` with nothing after it
    return scalar(n, "a string");
  }
  static std::string write(const std::string& v) { return quote(v); }
};

template <class T>
struct Codec<std::vector<T>> {
  static std::string type() {
    const std::string t = Codec<T>::type();
    return "list of " + (t == "number" ? std::string("numbers") : t == "integer" ? "integers" : t + "s");
  }
  static std::vector<T> read(const YAML::Node& n) {
    if (n.IsNull()) return {};
    if (n.IsScalar()) return {Codec<T>::read(n)};  // `metrics: fid` is a one-entry list
    if (!n.IsSequence()) throw ValueError{"expected a list like [a, b], got " + describe(n)};
    std::vector<T> out;
    out.reserve(n.size());
    for (size_t i = 0; i < n.size(); ++i) {
      try {
        out.push_back(Codec<T>::read(n[i]));
      } catch (const ValueError& e) {
        throw ValueError{fmt::format("entry [{}]: {}", i, e.message)};
      }
    }
    return out;
  }
  static std::string write(const std::vector<T>& v) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + Codec<T>::write(v[i]);
    return out + "]";
  }
};

template <class E>
struct Codec<E, std::enable_if_t<std::is_enum_v<E>>> {
  static std::string write(E v) { return to_string(v); }
};

// ---------------------------------------------------------------------------------------------
// Rules: what a key accepts beyond its type. `check` returns "" or why the value is rejected.

template <class T>
struct Rule {
  Rule() = default;
  Rule(std::string text_, std::function<std::string(const T&)> check_)
      : text(std::move(text_)), check(std::move(check_)) {}

  std::string text;                            // for the docs, e.g. ">= 1"; "" = any value
  std::function<std::string(const T&)> check;  // null = any value
  std::function<T(const YAML::Node&)> decode;  // null = Codec<T>::read
  std::string type;                            // "" = Codec<T>::type()
};

template <class T>
Rule<T> any() {
  return {};
}

template <class T>
Rule<T> at_least(T lo) {
  return {fmt::format(">= {}", lo),
          [lo](const T& v) { return v >= lo ? std::string() : fmt::format("must be >= {}, got {}", lo, v); }};
}

Rule<double> positive() {
  return {"> 0", [](const double& v) { return v > 0 ? std::string() : fmt::format("must be > 0, got {}", v); }};
}

// In [lo, hi] or [lo, hi) (hi_open).
Rule<double> between(double lo, double hi, bool hi_open = false) {
  const std::string range = fmt::format("[{}, {}{}", lo, hi, hi_open ? ")" : "]");
  return {"in " + range, [=](const double& v) {
            const bool ok = v >= lo && (hi_open ? v < hi : v <= hi);
            return ok ? std::string() : fmt::format("must be in {}, got {}", range, v);
          }};
}

std::string not_one_of(const std::string& v, const std::vector<std::string>& allowed) {
  return fmt::format("'{}' is not one of {}{}", v, join(allowed), did_you_mean(v, allowed));
}

Rule<std::string> one_of(std::vector<std::string> allowed) {
  Rule<std::string> r;
  r.type = "one of: " + join(allowed);
  r.check = [allowed](const std::string& v) {
    return std::find(allowed.begin(), allowed.end(), v) != allowed.end() ? std::string() : not_one_of(v, allowed);
  };
  return r;
}

// An enum key: the existing parse_* function reads it (aliases included); names list it.
template <class E>
Rule<E> choice(std::vector<std::string> (*names)(), E (*parse)(const std::string&)) {
  Rule<E> r;
  r.type = "one of: " + join(names());
  r.decode = [names, parse](const YAML::Node& n) {
    const std::string& s = scalar(n, ("one of " + join(names())).c_str());
    try {
      return parse(s);
    } catch (const UsageError&) {
      throw ValueError{not_one_of(s, names())};
    }
  };
  return r;
}

// Every entry obeys `each`; non_empty demands at least one.
template <class T>
Rule<std::vector<T>> list(Rule<T> each, bool non_empty) {
  Rule<std::vector<T>> r;
  r.type = (non_empty ? "non-empty " : "") + Codec<std::vector<T>>::type();
  if (!each.type.empty()) r.type += ", each " + each.type;
  if (!each.text.empty()) r.text = "each " + each.text;
  r.check = [each, non_empty](const std::vector<T>& v) {
    if (non_empty && v.empty()) return std::string("must not be empty");
    if (each.check) {
      for (size_t i = 0; i < v.size(); ++i) {
        const std::string why = each.check(v[i]);
        if (!why.empty()) return fmt::format("entry [{}] {}", i, why);
      }
    }
    return std::string();
  };
  return r;
}

Rule<int64_t> int_one_of(std::vector<int64_t> allowed) {
  std::vector<std::string> names;
  for (const auto a : allowed) names.push_back(std::to_string(a));
  Rule<int64_t> r;
  r.text = "one of " + join(names);
  r.check = [allowed, names](const int64_t& v) {
    return std::find(allowed.begin(), allowed.end(), v) != allowed.end()
               ? std::string()
               : fmt::format("must be one of {}, got {}", join(names), v);
  };
  return r;
}

// ---------------------------------------------------------------------------------------------
// The table.

struct Field {
  std::string section, name, key;  // "train", "lr", "train.lr"
  std::string type;                // for the docs and errors: "number, > 0"
  std::string help;
  std::function<void(Config&, const YAML::Node&)> read;  // decode + check + assign; throws ValueError
  std::function<std::string(const Config&)> write;       // YAML flow text
  std::function<std::string(const Config&)> check;       // "" or why the current value is bad
};

struct Section {
  std::string name, help;
  std::vector<std::string> names;  // its keys, unqualified
};

struct Table {
  std::vector<Section> sections;
  std::vector<Field> fields;
  std::unordered_map<std::string, size_t> by_key;
  std::vector<std::string> keys;

  const Field* find(const std::string& key) const {
    const auto it = by_key.find(key);
    return it == by_key.end() ? nullptr : &fields[it->second];
  }
  const Section* find_section(const std::string& name) const {
    for (const auto& s : sections)
      if (s.name == name) return &s;
    return nullptr;
  }
};

template <class S>
class SectionAdder {
 public:
  SectionAdder(Table& t, std::string name, S Config::*sec, std::string help)
      : t_(t), name_(std::move(name)), sec_(sec) {
    t_.sections.push_back({name_, std::move(help), {}});
  }

  template <class T>
  SectionAdder& operator()(const char* name, T S::*mem, Rule<T> rule, const char* help) {
    Field f;
    f.section = name_;
    f.name = name;
    f.key = name_ + "." + name;
    if constexpr (std::is_enum_v<T>) {
      f.type = rule.type;
    } else {
      f.type = rule.type.empty() ? Codec<T>::type() : rule.type;
    }
    if (!rule.text.empty()) f.type += ", " + rule.text;
    f.help = help;
    const auto sec = sec_;
    f.read = [sec, mem, rule](Config& c, const YAML::Node& n) {
      T v;
      if (rule.decode) {
        v = rule.decode(n);
      } else if constexpr (!std::is_enum_v<T>) {
        v = Codec<T>::read(n);
      }
      if (rule.check) {
        const std::string why = rule.check(v);
        if (!why.empty()) throw ValueError{why};
      }
      (c.*sec).*mem = std::move(v);
    };
    f.write = [sec, mem](const Config& c) { return Codec<T>::write((c.*sec).*mem); };
    f.check = [sec, mem, rule](const Config& c) { return rule.check ? rule.check((c.*sec).*mem) : std::string(); };
    t_.sections.back().names.push_back(f.name);
    t_.by_key.emplace(f.key, t_.fields.size());
    t_.keys.push_back(f.key);
    t_.fields.push_back(std::move(f));
    return *this;
  }

 private:
  Table& t_;
  std::string name_;
  S Config::*sec_;
};

const std::vector<std::string> kLrSchedules = {"constant", "cosine"};
const std::vector<std::string> kOnNonfinite = {"error", "skip"};
const std::vector<std::string> kDistBackends = {"auto", "gloo", "nccl"};
const std::vector<std::string> kSplits = {"train", "test"};

// -1 (the schedule's default) or a beta in (0, 1].
Rule<double> beta_or_default() {
  return {"< 0 (the schedule's default) or in (0, 1]", [](const double& v) {
            return v < 0 || (v > 0 && v <= 1) ? std::string()
                                              : fmt::format("must be < 0 (default) or in (0, 1], got {}", v);
          }};
}

Rule<double> beta() {
  return {"in (0, 1]", [](const double& v) {
            return v > 0 && v <= 1 ? std::string() : fmt::format("must be in (0, 1], got {}", v);
          }};
}

// -1 (the sampler's default) or an eta in [0, 1].
Rule<double> eta_or_default() {
  return {"< 0 (the sampler's default) or in [0, 1]", [](const double& v) {
            return v <= 1 ? std::string() : fmt::format("must be < 0 (default) or in [0, 1], got {}", v);
          }};
}

Rule<std::string> device_name() {
  Rule<std::string> r;
  r.type = "one of: auto, cpu, cuda, cuda:N";
  r.check = [](const std::string& v) {
    bool ok = v == "auto" || v == "cpu" || v == "cuda";
    if (!ok && v.size() > 5 && v.compare(0, 5, "cuda:") == 0)
      ok = std::all_of(v.begin() + 5, v.end(), [](unsigned char c) { return std::isdigit(c); });
    return ok ? std::string() : fmt::format("'{}' is not a device: use auto, cpu, cuda or cuda:N", v);
  };
  return r;
}

Table build_table() {
  // One key a line, read as a table.
  // clang-format off
  Table t;
  using M = ModelConfig;
  SectionAdder<M>(t, "model", &Config::model, "The network. UNet keys follow improved-diffusion's UNetModel.")
      ("type", &M::type, choice(model_type_names, parse_model_type),
       "unet for images, mlp for 2-D toy points, classifier for a noisy-image classifier (classifier guidance)")
      ("model_channels", &M::model_channels, at_least<int64_t>(1), "UNet: channels of the first level")
      ("channel_mult", &M::channel_mult, list(positive(), true),
       "UNet: channel multiplier per level (model_channels x it must be whole); the resolution halves between levels")
      ("num_res_blocks", &M::num_res_blocks, at_least<int64_t>(0), "UNet: residual blocks per level")
      ("attention_resolutions", &M::attention_resolutions, list(at_least<int64_t>(1), false),
       "UNet: feature-map sizes that get self-attention, e.g. [7] for the 7x7 level of a 28x28 input")
      ("num_heads", &M::num_heads, at_least<int64_t>(1), "UNet: attention heads")
      ("num_head_channels", &M::num_head_channels,
       Rule<int64_t>{"-1 or >= 1",
                     [](const int64_t& v) {
                       return v == -1 || v >= 1 ? std::string() : fmt::format("must be -1 or >= 1, got {}", v);
                     }},
       "UNet: > 0 sets the heads to channels / num_head_channels (overrides num_heads); -1 = off")
      ("num_heads_upsample", &M::num_heads_upsample,
       Rule<int64_t>{"-1 or >= 1",
                     [](const int64_t& v) {
                       return v == -1 || v >= 1 ? std::string() : fmt::format("must be -1 or >= 1, got {}", v);
                     }},
       "UNet: attention heads of the output (upsampling) blocks when num_head_channels is -1; -1 = num_heads")
      ("use_new_attention_order", &M::use_new_attention_order, any<bool>(),
       "UNet: split qkv into q, k, v before the heads (guided-diffusion's QKVAttention), not per head")
      ("dropout", &M::dropout, between(0, 1, true), "dropout probability in the residual blocks")
      ("use_scale_shift_norm", &M::use_scale_shift_norm, any<bool>(),
       "UNet: the time embedding scales and shifts the normalised activations (FiLM) instead of adding")
      ("resblock_updown", &M::resblock_updown, any<bool>(), "UNet: residual blocks do the up/downsampling")
      ("conv_resample", &M::conv_resample, any<bool>(), "UNet: a 3x3 convolution after up/downsampling")
      ("learn_sigma", &M::learn_sigma, any<bool>(),
       "the model also outputs the variance (2x channels); needs diffusion.variance learned or learned_range")
      ("low_res_size", &M::low_res_size, at_least<int64_t>(0),
       "UNet: > 0 makes a super-resolution model, conditioned on the image at this size (0 = off)")
      ("fourier_features", &M::fourier_features, any<bool>(),
       "UNet: stack sin and cos of 2^n 2 pi x (n = 6, 7) on the input's channels (VDM's Fourier features)")
      ("class_cond", &M::class_cond, any<bool>(), "condition on class labels (enables classifier-free guidance)")
      ("num_classes", &M::num_classes, at_least<int64_t>(0), "class count; 0 = the dataset's")
      ("p_uncond", &M::p_uncond, between(0, 1), "class_cond: probability of training with the null label")
      ("pool", &M::pool, choice(classifier_pool_names, parse_classifier_pool),
       "classifier: the head, attention (pooling, needs num_head_channels), adaptive (spatial mean), spatial or "
       "spatial_v2 (every block's spatial mean into an MLP)")
      ("hidden", &M::hidden, at_least<int64_t>(1), "MLP: width of the residual blocks")
      ("num_blocks", &M::num_blocks, at_least<int64_t>(1), "MLP: residual blocks");

  using D = DiffusionConfig;
  SectionAdder<D>(t, "diffusion", &Config::diffusion, "The noise schedule, parameterisation and loss.")
      ("schedule", &D::schedule, choice(schedule_kind_names, parse_schedule_kind), "how the betas are made")
      ("timesteps", &D::timesteps, at_least<int64_t>(1), "T, the number of diffusion steps")
      ("beta_start", &D::beta_start, beta_or_default(), "first beta (linear, scaled_linear, sigmoid)")
      ("beta_end", &D::beta_end, beta_or_default(), "last beta (linear, scaled_linear, sigmoid)")
      ("cosine_s", &D::cosine_s, at_least<double>(0), "cosine (and gamma_schedule cosine): the offset s of Nichol & Dhariwal eq. 17")
      ("betas", &D::betas, list(beta(), false), "custom: the T betas")
      ("betas_file", &D::betas_file, any<std::string>(), "custom: a file of betas (whitespace/comma separated)")
      ("zero_terminal_snr", &D::zero_terminal_snr, any<bool>(),
       "rescale the schedule so alpha_bar_T = 0 (Lin et al. 2023); needs prediction v or x0")
      ("rescale_timesteps", &D::rescale_timesteps, any<bool>(),
       "the network sees t * 1000 / timesteps (improved-diffusion's rescale_timesteps)")
      ("prediction", &D::prediction, choice(prediction_names, parse_prediction), "what the network predicts")
      ("variance", &D::variance, choice(variance_type_names, parse_variance_type),
       "variance of p(x_{t-1}|x_t); learned kinds need model.learn_sigma")
      ("loss", &D::loss, choice(loss_type_names, parse_loss_type),
       "simple = MSE; hybrid = MSE + hybrid_lambda * VLB (learned variance); kl = the VLB")
      ("hybrid_lambda", &D::hybrid_lambda, at_least<double>(0), "hybrid: weight of the VLB term")
      ("loss_weighting", &D::loss_weighting, choice(loss_weighting_names, parse_loss_weighting),
       "per-timestep weight of the MSE")
      ("min_snr_gamma", &D::min_snr_gamma, positive(), "min_snr: the clamp gamma (Hang et al. 2023)")
      ("timestep_sampler", &D::timestep_sampler, choice(timestep_sampler_names, parse_timestep_sampler),
       "how training draws t (importance: by the loss's second moment; lognormal: EDM's ln sigma ~ N(p_mean, p_std^2))")
      ("sigma_min", &D::sigma_min, positive(), "edm schedule: the smallest noise level")
      ("sigma_max", &D::sigma_max, positive(), "edm schedule: the largest noise level")
      ("sigma_data", &D::sigma_data, positive(), "edm prediction: the data's standard deviation in EDM's scalings")
      ("p_mean", &D::p_mean, between(-20.0, 20.0), "lognormal sampler: the mean of ln sigma")
      ("p_std", &D::p_std, positive(), "lognormal sampler: the standard deviation of ln sigma")
      ("gamma_schedule", &D::gamma_schedule, choice(gamma_kind_names, parse_gamma_kind),
       "vdm schedule: gamma(t) = -log SNR(t) fixed linear, linear with learned ends, a learned monotone network, "
       "or the SNR of the cosine or DDPM's linear-beta schedule between the ends")
      ("gamma_min", &D::gamma_min, between(-30.0, 30.0), "vdm schedule: gamma(0) (initial value when learned)")
      ("gamma_max", &D::gamma_max, between(-30.0, 30.0), "vdm schedule: gamma(1) (initial value when learned)")
      ("gamma_hidden", &D::gamma_hidden, at_least<int64_t>(1),
       "vdm schedule, gamma_schedule learned: width of the monotone network's hidden layer")
      ("continuous", &D::continuous, any<bool>(),
       "vdm schedule: the continuous-time loss (T -> infinity); false: the T-step loss, T = timesteps")
      ("decoder", &D::decoder, choice(vdm_decoder_names, parse_vdm_decoder),
       "vdm schedule: p(x | z_0), VDM's softmax over the 256 values or the discretised Gaussian")
      ("variance_objective", &D::variance_objective, any<bool>(),
       "vdm schedule, gamma_schedule learned: train the schedule's shape to lower the loss's variance");

  using A = DataConfig;
  SectionAdder<A>(t, "data", &Config::data, "The training / evaluation data.")
      ("dataset", &A::dataset, choice(dataset_kind_names, parse_dataset_kind), "the dataset kind")
      ("path", &A::path, any<std::string>(), "directory (or file for some kinds) holding the dataset")
      ("split", &A::split, one_of(kSplits), "split used for training")
      ("image_size", &A::image_size, at_least<int64_t>(0), "0 = native; else center-crop and resize to this")
      ("channels", &A::channels, int_one_of({0, 1, 3}), "0 = native, 1 = grey, 3 = RGB")
      ("random_flip", &A::random_flip, any<bool>(), "random horizontal flips")
      ("class_labels", &A::class_labels, any<bool>(), "read labels (folder: one class per subfolder)")
      ("skip_bad_files", &A::skip_bad_files, any<bool>(), "folder: skip unreadable images instead of failing")
      ("limit", &A::limit, at_least<int64_t>(0), "use only the first N examples; 0 = all")
      ("workers", &A::workers, at_least<int64_t>(0), "background loading threads")
      ("prefetch", &A::prefetch, at_least<int64_t>(1), "batches prepared ahead")
      ("toy", &A::toy, choice(toy_kind_names, parse_toy_kind), "toy2d: the 2-D distribution")
      ("toy_size", &A::toy_size, at_least<int64_t>(1), "toy2d: points per epoch");

  using R = TrainConfig;
  SectionAdder<R>(t, "train", &Config::train, "Optimisation, EMA, logging and checkpoints.")
      ("steps", &R::steps, at_least<int64_t>(1), "optimizer steps")
      ("batch_size", &R::batch_size, at_least<int64_t>(1), "examples per optimizer step")
      ("lr", &R::lr, positive(), "peak learning rate (AdamW)")
      ("adam_beta1", &R::adam_beta1, between(0, 1, true), "AdamW beta1")
      ("adam_beta2", &R::adam_beta2, between(0, 1, true), "AdamW beta2")
      ("adam_eps", &R::adam_eps, positive(), "AdamW epsilon")
      ("weight_decay", &R::weight_decay, at_least<double>(0), "AdamW decoupled weight decay")
      ("warmup_steps", &R::warmup_steps, at_least<int64_t>(0), "linear learning-rate warmup")
      ("lr_schedule", &R::lr_schedule, one_of(kLrSchedules), "after warmup: constant, or cosine decay to min_lr")
      ("min_lr", &R::min_lr, at_least<double>(0), "cosine: final learning rate (<= lr)")
      ("grad_clip", &R::grad_clip, at_least<double>(0), "max global gradient norm; 0 = off")
      ("grad_accum", &R::grad_accum, at_least<int64_t>(1), "micro-batches per optimizer step")
      ("ema_decay", &R::ema_decay, between(0, 1), "decay of the weights' exponential moving average")
      ("ema_warmup", &R::ema_warmup, any<bool>(), "decay = min(ema_decay, (1 + step) / (10 + step))")
      ("seed", &R::seed, any<uint64_t>(), "random seed")
      ("device", &R::device, device_name(), "auto (CUDA when available), cpu, cuda or cuda:N")
      ("threads", &R::threads, at_least<int64_t>(0), "CPU threads; 0 = OMP_NUM_THREADS if set, else all usable cores")
      ("channels_last", &R::channels_last, any<bool>(), "channels-last memory format")
      ("precision", &R::precision, one_of(precision_names()),
       "mixed precision: fp32, bf16 (CUDA, or CPUs with avx512_bf16/amx), fp16 (CUDA, loss-scaled), auto (bf16 "
       "where the hardware has it, fp16 on Volta/Turing GPUs, else fp32)")
      ("log_every", &R::log_every, at_least<int64_t>(1), "steps between log lines")
      ("checkpoint_every", &R::checkpoint_every, at_least<int64_t>(1), "steps between checkpoints")
      ("sample_every", &R::sample_every, at_least<int64_t>(0), "steps between sample grids; 0 = never")
      ("sample_num", &R::sample_num, at_least<int64_t>(1), "images in the periodic grid")
      ("sample_steps", &R::sample_steps, at_least<int64_t>(1), "sampler steps for the periodic grid")
      ("keep_checkpoints", &R::keep_checkpoints, at_least<int64_t>(0), "keep the last K checkpoints (plus latest)")
      ("on_nonfinite", &R::on_nonfinite, one_of(kOnNonfinite), "a NaN/inf loss: stop with an error, or skip the step")
      ("dist_backend", &R::dist_backend, one_of(kDistBackends),
       "data parallel: collectives through nccl (CUDA) or gloo (CPU); auto picks by device")
      ("dist_timeout", &R::dist_timeout, at_least<int64_t>(1),
       "data parallel: seconds a collective waits before the run stops naming the silent rank")
      ("dist_bucket_mb", &R::dist_bucket_mb, at_least<int64_t>(1), "data parallel: gradient all-reduce bucket, MiB")
      ("dist_rank_logs", &R::dist_rank_logs, any<bool>(), "data parallel: ranks > 0 also write rank_<r>.log");

  using P = SampleConfig;
  SectionAdder<P>(t, "sample", &Config::sample, "Generation.")
      ("sampler", &P::sampler, one_of(sampler_names()), "the reverse-process solver")
      ("steps", &P::steps, at_least<int64_t>(1), "sampler steps (<= diffusion.timesteps)")
      ("spacing", &P::spacing, any<std::string>(),
       "respacing (see schedule.h), e.g. `250`, `10,15,20`, `ddim50`, `trailing:50`, `list:0,10,20`; "
       "empty = the sampler's default")
      ("eta", &P::eta, eta_or_default(),
       "ddim and euler-ancestral: noise per step, 0 = deterministic ODE, 1 = DDPM-like; < 0 = the sampler's "
       "default (ddim 0, euler-ancestral 1)")
      ("num", &P::num, at_least<int64_t>(1), "images to generate")
      ("batch_size", &P::batch_size, at_least<int64_t>(1), "images per batch")
      ("seed", &P::seed, any<uint64_t>(), "random seed")
      ("use_ema", &P::use_ema, any<bool>(), "sample with the EMA weights")
      ("clip_x0", &P::clip_x0, any<bool>(), "clamp the predicted x_0 to [-1, 1]")
      ("dynamic_threshold", &P::dynamic_threshold, between(0, 1),
       "Imagen's dynamic-threshold percentile, e.g. 0.995; 0 = off")
      ("guidance_scale", &P::guidance_scale, at_least<double>(0),
       "classifier-free guidance scale; 1 = off (needs model.class_cond otherwise)")
      ("labels", &P::labels, list(at_least<int64_t>(0), false),
       "class labels to sample, cycled; empty = random / unconditional")
      ("classifier", &P::classifier, any<std::string>(),
       "classifier guidance: a noisy-image classifier checkpoint (diffuse import --classifier); empty = none")
      ("classifier_scale", &P::classifier_scale, at_least<double>(0), "classifier guidance: the gradient's scale s")
      ("sigmas", &P::sigmas, one_of(sigma_schedule_names()), "euler/heun: the sigma sequence")
      ("rho", &P::rho, positive(), "karras sigmas: the exponent rho")
      ("s_churn", &P::s_churn, at_least<double>(0), "euler/heun: EDM's stochastic churn S_churn (0 = deterministic)")
      ("s_tmin", &P::s_tmin, at_least<double>(0), "euler/heun: churn only where sigma >= s_tmin")
      ("s_tmax", &P::s_tmax, at_least<double>(0), "euler/heun: churn only where sigma <= s_tmax")
      ("s_noise", &P::s_noise, positive(), "euler/heun: the churn noise's scale S_noise")
      ("precision", &P::precision, one_of(precision_names()),
       "network precision while sampling: fp32, bf16, fp16 (CUDA), auto (bf16 where native)");

  using E = EvalConfig;
  SectionAdder<E>(t, "eval", &Config::eval, "Evaluation.")
      ("metrics", &E::metrics, list(one_of(eval_metric_names()), true), "metrics to compute")
      ("split", &E::split, one_of(kSplits), "held-out split")
      ("num_images", &E::num_images, at_least<int64_t>(0), "held-out images for bpd; 0 = all")
      ("batch_size", &E::batch_size, at_least<int64_t>(1), "evaluation batch size")
      ("mc_timesteps", &E::mc_timesteps, at_least<int64_t>(1), "bpd-mc: random timesteps per image")
      ("decoder_cdf", &E::decoder_cdf, choice(decoder_cdf_names, parse_decoder_cdf),
       "normal CDF of the decoder term L_0: exact, or tanh (improved-diffusion's approximation)")
      ("feature_extractor", &E::feature_extractor, any<std::string>(), "TorchScript file giving FID/KID features")
      ("reference", &E::reference, any<std::string>(), "image folder or cached statistics for FID/KID")
      ("num_samples", &E::num_samples, at_least<int64_t>(1), "generated samples for FID/KID/toy metrics");
  return t;
  // clang-format on
}

const Table& table() {
  static const Table t = build_table();
  return t;
}

// ---------------------------------------------------------------------------------------------
// Parsing.

// Where a node came from, for the error prefix: "configs/x.yaml:12" or "--set train.lr=x".
struct Source {
  std::string origin;
  bool lines = true;
  std::string at(const YAML::Mark& m) const {
    return lines && m.line >= 0 ? fmt::format("{}:{}", origin, m.line + 1) : origin;
  }
};

[[noreturn]] void fail(const Source& src, const YAML::Mark& m, const std::string& what) {
  throw UsageError(src.at(m) + ": " + what);
}

std::string unknown_key_message(const std::string& section, const std::string& name) {
  const Table& t = table();
  const Section* sec = t.find_section(section);
  std::string msg = fmt::format("unknown key '{}.{}'", section, name);
  // The same name in another section ("train.sampler" for "sample.sampler").
  for (const auto& s : t.sections) {
    if (std::find(s.names.begin(), s.names.end(), name) != s.names.end())
      return msg + fmt::format("; did you mean '{}.{}'?", s.name, name);
  }
  const std::string near = closest(name, sec->names);
  if (!near.empty()) return msg + fmt::format("; did you mean '{}.{}'?", section, near);
  // A shortened name ("warmup" for "warmup_steps").
  if (name.size() >= 3) {
    for (const auto& n : sec->names)
      if (n.compare(0, name.size(), name) == 0) return msg + fmt::format("; did you mean '{}.{}'?", section, n);
  }
  const std::string near_any = closest(section + "." + name, t.keys);
  if (!near_any.empty()) return msg + "; did you mean '" + near_any + "'?";
  return msg + fmt::format(" (keys of {}: {})", section, join(sec->names));
}

std::vector<std::string> section_names() {
  std::vector<std::string> names;
  for (const auto& s : table().sections) names.push_back(s.name);
  return names;
}

std::string unknown_section_message(const std::string& name) {
  const auto names = section_names();
  return fmt::format("unknown section '{}'{} (sections: {})", name, did_you_mean(name, names), join(names));
}

void read_field(Config& cfg, const Field& f, const YAML::Node& value, const Source& src, const YAML::Mark& m) {
  try {
    f.read(cfg, value);
  } catch (const ValueError& e) {
    fail(src, m, f.key + ": " + e.message);
  }
}

YAML::Node load_yaml(const std::string& text, const Source& src) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    if (e.mark.is_null()) throw UsageError(fmt::format("{}: malformed YAML: {}", src.origin, e.msg));
    if (!src.lines)  // a --set value: one line
      throw UsageError(
          fmt::format("{}: malformed YAML at column {} of the value: {}", src.origin, e.mark.column + 1, e.msg));
    throw UsageError(
        fmt::format("{}:{}:{}: malformed YAML: {}", src.origin, e.mark.line + 1, e.mark.column + 1, e.msg));
  }
}

// ---------------------------------------------------------------------------------------------
// Cross-field checks.

int64_t native_image_size(DatasetKind d) {
  switch (d) {
    case DatasetKind::FashionMnist:
    case DatasetKind::Mnist: return 28;
    case DatasetKind::Cifar10:
    case DatasetKind::Synthetic: return 32;
    default: return 0;  // folder: the images decide; toy2d: no images
  }
}

void check_unet(const Config& c, std::vector<std::string>& problems) {
  const ModelConfig& m = c.model;
  if (m.channel_mult.empty()) return;  // reported by the field check
  const bool native = c.data.image_size == 0;
  const int64_t size = native ? native_image_size(c.data.dataset) : c.data.image_size;
  if (size <= 0) return;
  const std::string size_text =
      native ? fmt::format("{} (data.image_size 0: {}'s native size)", size, to_string(c.data.dataset))
             : fmt::format("data.image_size {}", size);
  const size_t levels = m.channel_mult.size();
  if (levels > 62) return;
  const int64_t factor = int64_t{1} << (levels - 1);
  if (size % factor != 0) {
    problems.push_back(fmt::format(
        "model.channel_mult: {} levels halve the image {} times, so its size must be divisible by {}; got {}", levels,
        levels - 1, factor, size_text));
    return;
  }
  if (m.low_res_size >= size)
    problems.push_back(
        fmt::format("model.low_res_size: {} must be below the image size, {}", m.low_res_size, size_text));
  std::vector<std::string> level_sizes;
  for (size_t l = 0; l < levels; ++l) level_sizes.push_back(std::to_string(size >> l));
  for (const int64_t r : m.attention_resolutions) {
    size_t level = levels;
    for (size_t l = 0; l < levels; ++l)
      if ((size >> l) == r) level = l;
    if (level == levels) {
      problems.push_back(
          fmt::format("model.attention_resolutions: {} is not the size of any UNet level for {} "
                      "(level sizes: {})",
                      r, size_text, join(level_sizes)));
      continue;
    }
    const int64_t ch = unet_level_channels(m.model_channels, m.channel_mult[level]);
    if (m.num_head_channels > 0) {
      if (ch % m.num_head_channels != 0)
        problems.push_back(
            fmt::format("model.num_head_channels: {} does not divide the {} channels of the {}x{} "
                        "attention level (model.model_channels * model.channel_mult)",
                        m.num_head_channels, ch, r, r));
    } else if (m.num_heads > 0 && ch % m.num_heads != 0) {
      problems.push_back(
          fmt::format("model.num_heads: {} does not divide the {} channels of the {}x{} attention "
                      "level (model.model_channels * model.channel_mult)",
                      m.num_heads, ch, r, r));
    }
  }
}

void check_cross(const Config& c, std::vector<std::string>& problems) {
  const auto& m = c.model;
  const auto& d = c.diffusion;
  const bool toy = c.data.dataset == DatasetKind::Toy2d;
  auto add = [&](std::string p) { problems.push_back(std::move(p)); };

  // Model vs data.
  if (toy && m.type != ModelType::Mlp)
    add(fmt::format("data.dataset toy2d holds 2-D points: model.type must be mlp, got {}", to_string(m.type)));
  if (!toy && m.type == ModelType::Mlp)
    add(fmt::format("model.type mlp works on 2-D points only: data.dataset must be toy2d, got {}",
                    to_string(c.data.dataset)));
  if (m.type != ModelType::Mlp && !toy) check_unet(c, problems);
  if (m.low_res_size > 0 && m.type != ModelType::UNet)
    add(fmt::format("model.low_res_size: super-resolution needs model.type unet, got {}", to_string(m.type)));
  if (m.type == ModelType::Classifier) {
    if (m.num_classes < 1) add("model.type classifier needs model.num_classes >= 1 (its logits)");
    if (m.class_cond) add("model.type classifier: model.class_cond does not apply (the classifier predicts the class)");
    if (m.pool == ClassifierPool::Attention && m.num_head_channels < 1)
      add("model.pool attention needs model.num_head_channels >= 1 (its heads are channels / num_head_channels)");
  }
  if (!toy && c.data.path.empty()) add(fmt::format("data.path: dataset {} needs a path", to_string(c.data.dataset)));

  // Variance, learn_sigma and loss (improved-diffusion: a learned variance is trained only by the VLB term).
  const bool learned = is_learned(d.variance);
  if (m.learn_sigma && !learned)
    add(fmt::format("model.learn_sigma: true needs diffusion.variance learned or learned_range, got {}",
                    to_string(d.variance)));
  if (!m.learn_sigma && learned)
    add(fmt::format("diffusion.variance {} needs model.learn_sigma: true (the model must output the variance)",
                    to_string(d.variance)));
  if (d.loss == LossType::Hybrid && !learned)
    add(
        fmt::format("diffusion.loss hybrid trains a learned variance: diffusion.variance must be learned or "
                    "learned_range, got {} (use loss simple, or kl for the VLB with a fixed variance)",
                    to_string(d.variance)));
  if (d.loss == LossType::Simple && learned)
    add(
        fmt::format("diffusion.loss simple does not train the variance: with diffusion.variance {} use loss "
                    "hybrid or kl",
                    to_string(d.variance)));

  // Schedule.
  const bool custom = d.schedule == ScheduleKind::Custom;
  if (custom) {
    if (d.betas.empty() == d.betas_file.empty())
      add("diffusion.schedule custom needs exactly one of diffusion.betas and diffusion.betas_file");
    else if (!d.betas.empty() && static_cast<int64_t>(d.betas.size()) != d.timesteps)
      add(fmt::format("diffusion.betas has {} entries but diffusion.timesteps is {}; they must agree", d.betas.size(),
                      d.timesteps));
  } else {
    if (!d.betas.empty() || !d.betas_file.empty())
      add(fmt::format("diffusion.betas / diffusion.betas_file are used only by schedule custom, not {}",
                      to_string(d.schedule)));
  }
  const bool edm_grid = d.schedule == ScheduleKind::Edm;
  if (edm_grid) {
    if (d.timesteps < 2) add(fmt::format("diffusion.schedule edm needs diffusion.timesteps >= 2, got {}", d.timesteps));
    if (!std::isfinite(d.sigma_max)) add("diffusion.sigma_max must be finite for schedule edm");
    else if (d.sigma_min >= d.sigma_max)
      add(fmt::format("diffusion.sigma_min ({}) must be below diffusion.sigma_max ({})", d.sigma_min, d.sigma_max));
    if (d.rescale_timesteps)
      add("diffusion.rescale_timesteps does not apply to schedule edm (the network sees EDM's c_noise)");
    if (d.zero_terminal_snr) add("diffusion.zero_terminal_snr does not apply to schedule edm (sigma_max is finite)");
  } else if (d.sigma_min != DiffusionConfig{}.sigma_min || d.sigma_max != DiffusionConfig{}.sigma_max) {
    add(fmt::format("diffusion.sigma_min / diffusion.sigma_max are used only by schedule edm, not {}",
                    to_string(d.schedule)));
  }
  if (d.prediction != Prediction::Edm && d.sigma_data != DiffusionConfig{}.sigma_data)
    add(fmt::format("diffusion.sigma_data is used only by prediction edm, not {}", to_string(d.prediction)));
  if (d.timestep_sampler == TimestepSamplerKind::Lognormal) {
    if (!edm_grid)
      add(
          fmt::format("diffusion.timestep_sampler lognormal draws continuous noise levels: it needs schedule edm, "
                      "got {}",
                      to_string(d.schedule)));
    if (d.loss != LossType::Simple)
      add(
          fmt::format("diffusion.timestep_sampler lognormal needs diffusion.loss simple (the {} loss's bound is "
                      "a sum over the grid's steps; use timestep_sampler uniform)",
                      to_string(d.loss)));
  } else if (d.p_mean != DiffusionConfig{}.p_mean || d.p_std != DiffusionConfig{}.p_std) {
    add(fmt::format("diffusion.p_mean / diffusion.p_std are used only by timestep_sampler lognormal, not {}",
                    to_string(d.timestep_sampler)));
  }
  const bool vdm = d.schedule == ScheduleKind::Vdm;
  const DiffusionConfig defaults;
  if (vdm) {
    if (d.gamma_min >= d.gamma_max)
      add(fmt::format("diffusion.gamma_min ({}) must be below diffusion.gamma_max ({})", d.gamma_min, d.gamma_max));
    if (d.gamma_max > gamma_kind_limit(d.gamma_schedule))
      add(fmt::format("diffusion.gamma_max ({}) is past the end of gamma_schedule {}, which reaches {:.4g} at t = 1",
                      d.gamma_max, to_string(d.gamma_schedule), gamma_kind_limit(d.gamma_schedule)));
    if (d.timestep_sampler != TimestepSamplerKind::Uniform && d.timestep_sampler != TimestepSamplerKind::Antithetic)
      add(
          fmt::format("diffusion.schedule vdm draws continuous times: diffusion.timestep_sampler must be uniform or "
                      "antithetic, got {}",
                      to_string(d.timestep_sampler)));
    if (d.loss != LossType::Simple || d.loss_weighting != LossWeighting::None)
      add("diffusion.schedule vdm trains on its own bound (vdm.h): leave diffusion.loss simple and "
          "diffusion.loss_weighting none");
    if (d.rescale_timesteps) add("diffusion.rescale_timesteps does not apply to schedule vdm (the network sees gamma)");
    if (d.zero_terminal_snr) add("diffusion.zero_terminal_snr does not apply to schedule vdm (gamma_max is finite)");
    if (d.variance != VarianceType::FixedSmall)
      add(fmt::format("diffusion.schedule vdm needs diffusion.variance fixed_small, got {}", to_string(d.variance)));
  } else {
    if (d.gamma_schedule != defaults.gamma_schedule || d.gamma_min != defaults.gamma_min ||
        d.gamma_max != defaults.gamma_max || d.gamma_hidden != defaults.gamma_hidden ||
        d.continuous != defaults.continuous || d.decoder != defaults.decoder ||
        d.variance_objective != defaults.variance_objective)
      add(
          fmt::format("diffusion.gamma_schedule, gamma_min, gamma_max, gamma_hidden, continuous, decoder and "
                      "variance_objective are used only by schedule vdm, not {}",
                      to_string(d.schedule)));
    if (d.timestep_sampler == TimestepSamplerKind::Antithetic)
      add(fmt::format("diffusion.timestep_sampler antithetic draws continuous times: it needs schedule vdm, got {}",
                      to_string(d.schedule)));
  }
  if (d.schedule == ScheduleKind::Cosine || custom || edm_grid || vdm) {
    if (d.beta_start >= 0 || d.beta_end >= 0)
      add(fmt::format("diffusion.beta_start / diffusion.beta_end are not used by schedule {}; leave them at -1",
                      to_string(d.schedule)));
  } else if (d.beta_start >= 0 && d.beta_end >= 0 && d.beta_start >= d.beta_end) {
    add(fmt::format("diffusion.beta_start ({}) must be below diffusion.beta_end ({})", d.beta_start, d.beta_end));
  }
  if (d.zero_terminal_snr && (d.prediction == Prediction::Epsilon || d.prediction == Prediction::Score))
    add(
        fmt::format("diffusion.zero_terminal_snr makes alpha_bar_T = 0, where x_0 cannot be recovered from an {} "
                    "prediction: set diffusion.prediction to v or x0 (Lin et al. 2023)",
                    to_string(d.prediction)));

  // Sampling.
  if (!custom || !d.betas.empty()) {
    if (c.sample.steps > d.timesteps)
      add(fmt::format("sample.steps ({}) must be <= diffusion.timesteps ({})", c.sample.steps, d.timesteps));
    if (c.train.sample_steps > d.timesteps)
      add(fmt::format("train.sample_steps ({}) must be <= diffusion.timesteps ({})", c.train.sample_steps,
                      d.timesteps));
    if (!c.sample.spacing.empty() && d.timesteps >= 1) {
      try {
        space_timesteps(d.timesteps, c.sample.spacing);
      } catch (const UsageError& e) {
        add(fmt::format("sample.spacing: {} (for diffusion.timesteps {})", e.what(), d.timesteps));
      }
    }
  }
  if (c.sample.guidance_scale != 1.0 && !m.class_cond)
    add(fmt::format("sample.guidance_scale {} needs model.class_cond: true (1 = no guidance)",
                    c.sample.guidance_scale));
  else if (c.sample.guidance_scale != 1.0 && m.p_uncond <= 0.0)
    add(
        fmt::format("sample.guidance_scale {} needs a model trained with the null label (model.p_uncond > 0; "
                    "OpenAI's imported models have 0)",
                    c.sample.guidance_scale));
  if (!c.sample.labels.empty() && !m.class_cond && c.sample.classifier.empty())
    add("sample.labels needs model.class_cond: true or a sample.classifier");
  if (m.class_cond && m.num_classes > 0) {
    for (const int64_t l : c.sample.labels)
      if (l >= m.num_classes)
        add(fmt::format("sample.labels: label {} is not below model.num_classes {}", l, m.num_classes));
  }
  if (m.class_cond && toy) add("model.class_cond needs labelled data: data.dataset toy2d has no labels");
  if (m.class_cond && !c.data.class_labels) add("model.class_cond needs data.class_labels: true");

  // Training.
  if (c.train.lr_schedule == "cosine" && c.train.min_lr > c.train.lr)
    add(fmt::format("train.min_lr ({}) must be <= train.lr ({})", c.train.min_lr, c.train.lr));

  // Evaluation.
  std::unordered_set<std::string> seen;
  for (const auto& metric : c.eval.metrics) {
    if (!seen.insert(metric).second) add(fmt::format("eval.metrics: '{}' is listed twice", metric));
    if (metric == "toy" && !toy)
      add(fmt::format("eval.metrics: 'toy' needs data.dataset toy2d, got {}", to_string(c.data.dataset)));
    if (metric != "toy" && toy)
      add(fmt::format("eval.metrics: '{}' needs image data, but data.dataset is toy2d (use toy)", metric));
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

Config parse_config(const std::string& yaml_text, const std::string& origin) {
  const Source src{origin, true};
  const YAML::Node root = load_yaml(yaml_text, src);
  Config cfg;
  if (root.IsNull()) return cfg;  // empty file: all defaults
  if (!root.IsMap())
    fail(src, root.Mark(),
         fmt::format("expected sections ({}) at the top level, got {}", join(section_names()), describe(root)));
  const Table& t = table();
  std::unordered_map<std::string, int> seen_sections;
  for (auto it = root.begin(); it != root.end(); ++it) {
    // Copies: it-> yields a temporary pair proxy, so references into it would dangle (ASan: stack-use-after-scope).
    const YAML::Node k = it->first;
    const YAML::Node body = it->second;
    if (!k.IsScalar()) fail(src, k.Mark(), "section names must be plain words, got " + describe(k));
    const std::string& sec_name = k.Scalar();
    const Section* sec = t.find_section(sec_name);
    if (!sec) fail(src, k.Mark(), unknown_section_message(sec_name));
    if (!seen_sections.emplace(sec_name, k.Mark().line + 1).second)
      fail(src, k.Mark(),
           fmt::format("section '{}' appears twice (also on line {})", sec_name, seen_sections[sec_name]));
    if (body.IsNull()) continue;  // "eval:" with nothing under it
    if (!body.IsMap())
      fail(src, k.Mark(),
           fmt::format("section '{}' must be a map of key: value lines, got {}", sec_name, describe(body)));
    std::unordered_map<std::string, int> seen_keys;
    for (auto kv = body.begin(); kv != body.end(); ++kv) {
      const YAML::Node key = kv->first;  // a copy, as above
      if (!key.IsScalar())
        fail(src, key.Mark(), fmt::format("keys of section '{}' must be plain words, got {}", sec_name, describe(key)));
      const std::string path = sec_name + "." + key.Scalar();
      const Field* f = t.find(path);
      if (!f) fail(src, key.Mark(), unknown_key_message(sec_name, key.Scalar()));
      if (!seen_keys.emplace(path, key.Mark().line + 1).second)
        fail(src, key.Mark(), fmt::format("{} is given twice (also on line {})", path, seen_keys[path]));
      read_field(cfg, *f, kv->second, src, key.Mark());
    }
  }
  return cfg;
}

Config load_config(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw UsageError(fmt::format("config file '{}' does not exist", path));
  if (fs::is_directory(path, ec)) throw UsageError(fmt::format("config file '{}' is a directory", path));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError(fmt::format("config file '{}' cannot be opened", path));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw UsageError(fmt::format("config file '{}' cannot be read", path));
  return parse_config(text.str(), path);
}

void apply_override(Config& cfg, const std::string& assignment) {
  const Source src{"--set " + assignment, false};
  const auto eq = assignment.find('=');
  if (eq == std::string::npos) throw UsageError(fmt::format("--set '{}': expected section.key=VALUE", assignment));
  auto trim = [](std::string s) {
    const auto b = s.find_first_not_of(" \t");
    const auto e = s.find_last_not_of(" \t");
    return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
  };
  const std::string key = trim(assignment.substr(0, eq));
  const auto dot = key.find('.');
  const Table& t = table();
  if (dot == std::string::npos)
    throw UsageError(fmt::format("{}: expected section.key=VALUE, e.g. train.lr=2e-4", src.origin));
  const std::string sec_name = key.substr(0, dot);
  if (!t.find_section(sec_name)) throw UsageError(src.origin + ": " + unknown_section_message(sec_name));
  const Field* f = t.find(key);
  if (!f) throw UsageError(src.origin + ": " + unknown_key_message(sec_name, key.substr(dot + 1)));
  const YAML::Node value = load_yaml(assignment.substr(eq + 1), src);
  Config updated = cfg;  // all or nothing
  read_field(updated, *f, value, src, YAML::Mark::null_mark());
  cfg = std::move(updated);
}

std::string to_yaml(const Config& cfg) {
  const Table& t = table();
  std::string out;
  std::string section;
  for (const Field& f : t.fields) {
    if (f.section != section) {
      section = f.section;
      out += section + ":\n";
    }
    out += "  " + f.name + ": " + f.write(cfg) + "\n";
  }
  return out;
}

void validate(const Config& cfg) {
  std::vector<std::string> problems;
  for (const Field& f : table().fields) {
    const std::string why = f.check(cfg);
    if (!why.empty()) problems.push_back(f.key + ": " + why);
  }
  check_cross(cfg, problems);
  if (problems.empty()) return;
  if (problems.size() == 1) throw UsageError("invalid config: " + problems[0]);
  std::string msg = fmt::format("invalid config ({} problems):", problems.size());
  for (const auto& p : problems) msg += "\n  - " + p;
  throw UsageError(msg);
}

std::vector<std::string> config_keys() { return table().keys; }

std::string config_reference_markdown() {
  const Table& t = table();
  const Config defaults;
  std::string out;
  for (const Section& s : t.sections) {
    out += fmt::format("### {}\n\n{}\n\n| key | type | default | description |\n|---|---|---|---|\n", s.name, s.help);
    for (const Field& f : t.fields) {
      if (f.section != s.name) continue;
      auto cell = [](std::string text) {  // a '|' would end the table cell
        std::string escaped;
        for (const char ch : text) escaped += ch == '|' ? std::string("\\|") : std::string(1, ch);
        return escaped;
      };
      out += fmt::format("| `{}` | {} | `{}` | {} |\n", f.key, cell(f.type), cell(f.write(defaults)), cell(f.help));
    }
    out += "\n";
  }
  return out;
}

}  // namespace diffuse

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include "diffuse/error.h"
#include "diffuse/image_io.h"
#include "test_util.h"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void spew(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Bitwise CRC-32 (ISO 3309 / PNG, reflected polynomial 0xEDB88320), independent of zlib.
uint32_t crc32_bitwise(const std::string& s) {
  uint32_t c = 0xffffffffu;
  for (unsigned char b : s) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
  }
  return c ^ 0xffffffffu;
}

uint32_t be32(const std::string& b, size_t at) {
  const auto* p = reinterpret_cast<const uint8_t*>(b.data() + at);
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

std::string be32_bytes(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

struct Chunk {
  std::string type, data;
  uint32_t crc;
};

// Walks a PNG's chunks independently of the library.
std::vector<Chunk> png_chunks(const std::string& png) {
  std::vector<Chunk> out;
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  size_t pos = 8;
  while (pos + 12 <= png.size()) {
    const uint32_t len = be32(png, pos);
    Chunk c{png.substr(pos + 4, 4), png.substr(pos + 8, len), be32(png, pos + 8 + len)};
    out.push_back(c);
    pos += 12 + len;
    if (c.type == "IEND") break;
  }
  EXPECT_EQ(pos, png.size());
  return out;
}

std::string make_chunk(const std::string& type, const std::string& data) {
  return be32_bytes(static_cast<uint32_t>(data.size())) + type + data + be32_bytes(crc32_bitwise(type + data));
}

torch::Tensor random_u8(std::vector<int64_t> shape, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(0, 256, shape, torch::kUInt8);
}

}  // namespace

TEST(ImageIo, ToUint8ExactValuesRoundHalfUp) {
  const auto x = torch::tensor({-1.0f, 1.0f, 0.0f, -3.0f, 2.0f, 0.5f, -0.5f, 1.0f / 255.0f});
  const auto u = to_uint8(x);
  ASSERT_EQ(u.scalar_type(), torch::kUInt8);
  // 0 -> 127.5 exactly, a tie, rounded up to 128; 0.5 -> 191.25 -> 191; -0.5 -> 63.75 -> 64;
  // 1/255 -> 128.0 -> 128; out-of-range values clamp.
  const std::vector<int> expected = {0, 255, 128, 0, 255, 191, 64, 128};
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(u[i].item<int>(), expected[i]) << "x=" << x[i].item<float>();
  EXPECT_EQ(to_uint8(torch::tensor({std::nanf("")}))[0].item<int>(), 128);
  EXPECT_TRUE(torch::equal(to_uint8(u), u));  // uint8 passes through
}

TEST(ImageIo, ToUint8InvertsPixelScaling) {
  // Every byte k maps to k / 127.5 - 1 in the datasets; to_uint8 must give k back, whether the
  // float was computed in double or in float arithmetic.
  auto k = torch::arange(256, torch::kFloat64);
  EXPECT_TRUE(torch::equal(to_uint8((k / 127.5 - 1.0).to(torch::kFloat32)), k.to(torch::kUInt8)));
  auto kf = torch::arange(256, torch::kFloat32);
  EXPECT_TRUE(torch::equal(to_uint8(kf / 127.5f - 1.0f), k.to(torch::kUInt8)));
  // Random values against floor((x + 1) * 127.5 + 0.5) computed in double, away from ties.
  torch::manual_seed(3);
  const auto x = torch::rand({4000}) * 2.4 - 1.2;
  const auto v = (x.to(torch::kFloat64) + 1.0) * 127.5;
  const auto ref = torch::floor(v + 0.5).clamp(0, 255);
  const auto away_from_tie = (v - torch::floor(v) - 0.5).abs() > 1e-3;
  const auto got = to_uint8(x).to(torch::kFloat64);
  EXPECT_TRUE(torch::equal(got.masked_select(away_from_tie), ref.masked_select(away_from_tie)));
  EXPECT_GT(away_from_tie.sum().item<int64_t>(), 3900);
}

TEST(ImageIo, MakeGridLayout) {
  const int64_t n = 5, c = 2, h = 2, w = 3, p = 2;
  const auto imgs = torch::rand({n, c, h, w});
  auto check = [&](int64_t nrow, int64_t cols, int64_t rows) {
    const auto g = make_grid(imgs, nrow, p, -1.0);
    ASSERT_EQ(g.sizes().vec(), (std::vector<int64_t>{c, rows * (h + p) + p, cols * (w + p) + p}));
    auto expected = torch::full({c, rows * (h + p) + p, cols * (w + p) + p}, -1.0f);
    auto acc = expected.accessor<float, 3>();
    auto src = imgs.accessor<float, 4>();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t y = 0; y < h; ++y)
          for (int64_t x = 0; x < w; ++x)
            acc[ch][p + (i / cols) * (h + p) + y][p + (i % cols) * (w + p) + x] = src[i][ch][y][x];
    EXPECT_TRUE(torch::equal(g, expected)) << "nrow=" << nrow;
  };
  check(0, 3, 2);  // ceil(sqrt(5)) = 3 per row
  check(2, 2, 3);
  check(10, 5, 1);  // never more columns than images
  const auto g0 = make_grid(imgs, 1, 0);
  EXPECT_TRUE(torch::equal(g0, imgs.permute({1, 0, 2, 3}).reshape({c, n * h, w})));
  EXPECT_THROW(make_grid(torch::rand({2, 3, 4})), UsageError);
  // uint8 input keeps its dtype; the pad value goes through to_uint8.
  const auto gu = make_grid(to_uint8(imgs), 0, 1, 1.0);
  EXPECT_EQ(gu.scalar_type(), torch::kUInt8);
  EXPECT_EQ(gu[0][0][0].item<int>(), 255);
}

TEST(ImageIo, PngRoundTripWithText) {
  test::TempDir dir;
  const std::map<std::string, std::string> text = {
      {"Title", "diffuse samples"}, {"config", "model:\n  type: unet\n  channel_mult: [1,2,2]\n"}, {"step", "1234"}};
  for (int64_t c = 1; c <= 4; ++c) {
    const auto img = random_u8({c, 7, 5}, 10 + c);
    const auto path = (dir.path() / ("img" + std::to_string(c) + ".png")).string();
    save_png(path, img, text);
    const auto back = load_image(path);  // stb_image decodes it
    EXPECT_TRUE(torch::equal(back, img)) << "channels " << c;
    EXPECT_EQ(read_png_text(path), text);

    // Independent check of the file structure: every chunk's CRC (bitwise CRC-32), the text
    // chunks right after IHDR and before IDAT, IEND last with its well-known CRC.
    const auto chunks = png_chunks(slurp(path));
    ASSERT_GE(chunks.size(), 6u);
    for (const auto& ch : chunks) EXPECT_EQ(ch.crc, crc32_bitwise(ch.type + ch.data)) << ch.type;
    EXPECT_EQ(chunks[0].type, "IHDR");
    EXPECT_EQ(be32(chunks[0].data, 0), 5u);  // width
    EXPECT_EQ(be32(chunks[0].data, 4), 7u);  // height
    for (size_t i = 1; i <= 3; ++i) EXPECT_EQ(chunks[i].type, "tEXt");
    EXPECT_EQ(chunks[1].data, std::string("Title\0diffuse samples", 21));
    EXPECT_EQ(chunks[4].type, "IDAT");
    EXPECT_EQ(chunks.back().type, "IEND");
    EXPECT_EQ(chunks.back().crc, 0xAE426082u);
  }
  // Only the files: no temporaries left behind.
  int64_t files = 0;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    ++files;
    EXPECT_EQ(e.path().extension(), ".png") << e.path();
  }
  EXPECT_EQ(files, 4);
}

TEST(ImageIo, PngFromFloatAndGrid) {
  test::TempDir dir;
  torch::manual_seed(5);
  const auto imgs = torch::rand({3, 3, 4, 6}) * 2 - 1;
  const auto path = (dir.path() / "grid.png").string();
  save_grid(path, imgs, 2, {{"k", "v"}});
  EXPECT_TRUE(torch::equal(load_image(path), to_uint8(make_grid(imgs, 2))));
  const auto single = (dir.path() / "one.png").string();
  save_png(single, imgs[1]);
  EXPECT_TRUE(torch::equal(load_image(single), to_uint8(imgs[1])));
  EXPECT_TRUE(read_png_text(single).empty());
  // Overwriting replaces the file.
  save_png(single, imgs[2], {{"a", "b"}});
  EXPECT_TRUE(torch::equal(load_image(single), to_uint8(imgs[2])));
  EXPECT_EQ(read_png_text(single).at("a"), "b");
  // Channel conversion on load (stb's).
  EXPECT_EQ(load_image(single, 1).sizes().vec(), (std::vector<int64_t>{1, 4, 6}));
  EXPECT_EQ(load_image(single, 4).sizes().vec(), (std::vector<int64_t>{4, 4, 6}));
}

TEST(ImageIo, PngTextNonAsciiAndOtherChunkKinds) {
  test::TempDir dir;
  const auto path = (dir.path() / "u.png").string();
  const std::string utf8 = "\xcf\x83 = 0.5, na\xc3\xafve";  // "σ = 0.5, naïve"
  save_png(path, random_u8({1, 2, 2}, 1), {{"Comment", utf8}});
  const auto chunks = png_chunks(slurp(path));
  EXPECT_EQ(chunks[1].type, "iTXt");
  EXPECT_EQ(read_png_text(path).at("Comment"), utf8);

  // Hand-made chunks: a Latin-1 tEXt (0xE9 = e acute) and a zTXt (zlib-compressed).
  std::string png = slurp(path);
  const std::string raw = "compressed text, compressed text, compressed text";
  uLongf zlen = compressBound(raw.size());
  std::string z(zlen, '\0');
  ASSERT_EQ(compress(reinterpret_cast<Bytef*>(&z[0]), &zlen, reinterpret_cast<const Bytef*>(raw.data()), raw.size()),
            Z_OK);
  z.resize(zlen);
  const std::string extra = make_chunk("tEXt", std::string("Author\0Ren\xe9", 11)) +
                            make_chunk("zTXt", std::string("Description\0\0", 13) + z);
  png.insert(33, extra);
  const auto path2 = (dir.path() / "hand.png").string();
  spew(path2, png);
  const auto t = read_png_text(path2);
  EXPECT_EQ(t.at("Author"), "Ren\xc3\xa9");
  EXPECT_EQ(t.at("Description"), raw);
  EXPECT_EQ(t.at("Comment"), utf8);
  EXPECT_EQ(load_image(path2).sizes().vec(), (std::vector<int64_t>{1, 2, 2}));
}

TEST(ImageIo, PngTextKeywordRules) {
  const auto img = random_u8({1, 2, 2}, 2);
  for (const std::string& bad : {std::string(""), std::string(" lead"), std::string("trail "), std::string("a  b"),
                                 std::string(80, 'k'), std::string("tab\there"), std::string("caf\xc3\xa9")})
    EXPECT_THROW(encode_png(img, {{bad, "v"}}), UsageError) << "'" << bad << "'";
  EXPECT_THROW(encode_png(img, {{"k", std::string("a\0b", 3)}}), UsageError);
  EXPECT_NO_THROW(encode_png(img, {{std::string(79, 'k'), ""}, {"a b", "x"}}));
  EXPECT_THROW(encode_png(torch::zeros({5, 2, 2}, torch::kUInt8)), UsageError);
  EXPECT_THROW(encode_png(torch::zeros({2, 2}, torch::kUInt8)), UsageError);
}

TEST(ImageIo, ErrorsNameThePath) {
  test::TempDir dir;
  const auto img = random_u8({3, 16, 16}, 4);
  const auto missing_dir = (dir.path() / "no_such_dir" / "x.png").string();
  try {
    save_png(missing_dir, img);
    FAIL() << "no exception";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(missing_dir), std::string::npos) << e.what();
  }
  const auto good = (dir.path() / "good.png").string();
  save_png(good, img, {{"key", "value"}});
  const std::string bytes = slurp(good);

  auto expect_error = [](auto fn, const std::string& path, const std::string& what) {
    try {
      fn();
      FAIL() << "no exception for " << path;
    } catch (const UsageError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(path), std::string::npos) << msg;
      EXPECT_NE(msg.find(what), std::string::npos) << msg;
    }
  };
  const auto notpng = (dir.path() / "notpng.png").string();
  spew(notpng, "this is not an image at all, just some text");
  expect_error([&] { read_png_text(notpng); }, notpng, "not a PNG");
  expect_error([&] { load_image(notpng); }, notpng, "decode");
  const auto truncated = (dir.path() / "truncated.png").string();
  spew(truncated, bytes.substr(0, bytes.size() / 2));
  expect_error([&] { read_png_text(truncated); }, truncated, "truncated");
  expect_error([&] { load_image(truncated); }, truncated, "decode");
  const auto badcrc = (dir.path() / "badcrc.png").string();
  std::string corrupt = bytes;
  corrupt[33 + 8 + 1] ^= 0x20;  // a byte of the tEXt keyword
  spew(badcrc, corrupt);
  expect_error([&] { read_png_text(badcrc); }, badcrc, "CRC");
  const auto nofile = (dir.path() / "nofile.png").string();
  expect_error([&] { load_image(nofile); }, nofile, "cannot open");
  expect_error([&] { image_info(notpng); }, notpng, "not a decodable image");
  const auto info = image_info(good);
  EXPECT_EQ(info.width, 16);
  EXPECT_EQ(info.height, 16);
  EXPECT_EQ(info.channels, 3);
}

// A header decides how much a decode allocates: a crafted PNG of a few dozen bytes claiming
// 30000 x 30000 pixels (900 MB) is refused from its header, naming the file, and so is one
// a pixel wider than the limit; one at the limit decodes.
// load_image and image_info both refuse `path` with a UsageError holding every one of `parts`.
void expect_both_readers_refuse(const std::string& path, const std::vector<std::string>& parts) {
  for (const bool header_only : {false, true}) {
    try {
      header_only ? (void)image_info(path) : (void)load_image(path);
      ADD_FAILURE() << path << " was accepted (header_only " << header_only << ")";
    } catch (const UsageError& e) {
      for (const auto& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  }
}

TEST(ImageIo, OversizedImagesAreRefusedFromTheHeader) {
  test::TempDir dir;
  std::string ihdr = be32_bytes(30000) + be32_bytes(30000);
  ihdr += {8, 0, 0, 0, 0};  // 8-bit grey
  const std::string idat = [] {
    std::string z(64, '\0');
    uLongf n = static_cast<uLongf>(z.size());
    const std::string row(16, '\0');
    compress(reinterpret_cast<Bytef*>(z.data()), &n, reinterpret_cast<const Bytef*>(row.data()), row.size());
    return z.substr(0, n);
  }();
  const auto huge = (dir.path() / "huge.png").string();
  spew(huge, std::string("\x89PNG\r\n\x1a\n", 8) + make_chunk("IHDR", ihdr) + make_chunk("IDAT", idat) +
                 make_chunk("IEND", ""));
  expect_both_readers_refuse(huge, {huge, "30000x30000"});
  const auto wide = (dir.path() / "wide.png").string(), edge = (dir.path() / "edge.png").string();
  save_png(wide, torch::zeros({1, 1, 16385}, torch::kUInt8));
  save_png(edge, torch::zeros({1, 1, 16384}, torch::kUInt8));
  EXPECT_THROW(load_image(wide), UsageError);
  EXPECT_EQ(load_image(edge).size(2), 16384);
}

TEST(ImageIo, HeadersClaimingFarMorePixelsThanTheFileHoldsAreRefused) {
  // Found by fuzzing (tests/fuzz/regressions/image/timeout-*): 21 bytes that stb reads as a TGA
  // header of 8224x8224 pixels, whose decode filled 200 MB with zeros for 13 s under ASan.
  // TGA is no longer read at all; the same claim from a PNG header is refused by its size.
  test::TempDir dir;
  const auto crafted = (dir.path() / "a.png").string();
  spew(crafted, std::string("\x89\x00\x0a\x20PG\x0a\x20", 8) + std::string(10, ' ') + "x\x89P");
  expect_both_readers_refuse(crafted, {crafted});
  std::string ihdr = be32_bytes(8224) + be32_bytes(8224);
  ihdr += {8, 2, 0, 0, 0};  // 8-bit RGB
  const auto claim = (dir.path() / "claim.png").string();
  spew(claim, std::string("\x89PNG\r\n\x1a\n", 8) + make_chunk("IHDR", ihdr) + make_chunk("IEND", ""));
  expect_both_readers_refuse(claim, {claim, "(45 bytes) claims 8224x8224 pixels"});
  // A real image that deflate packs about 1000:1 still decodes: 3000x3000 RGB of one colour
  // (27 MB decoded, above the 16 MiB floor).
  const auto flat = (dir.path() / "flat.png").string();
  save_png(flat, torch::full({3, 3000, 3000}, 200, torch::kUInt8));
  const auto img = load_image(flat);
  EXPECT_EQ(img.size(1), 3000);
  EXPECT_EQ(img[2][2999][2999].item<int>(), 200);
  EXPECT_EQ(image_info(flat).width, 3000);
}

TEST(ImageIo, JpegHuffmanTablesBeyondTheirSizeAreRefused) {
  // Found by fuzzing (tests/fuzz/regressions/image/crash-a704d3d4...): a DHT segment whose 16
  // code counts total more than 256 made stb write past its Huffman tables. Start of image,
  // then a DHT segment with one table of 16 x 20 = 320 codes.
  test::TempDir dir;
  std::string dht = {'\x00'};  // class 0 (DC), id 0
  dht += std::string(16, '\x14');
  dht += std::string(320, '\x01');
  const auto len = static_cast<uint16_t>(dht.size() + 2);
  std::string jpeg = std::string("\xff\xd8\xff\xc4", 4) + char(len >> 8) + char(len & 0xff) + dht;
  const auto path = (dir.path() / "tables.jpg").string();
  spew(path, jpeg + std::string("\xff\xd9", 2));
  expect_both_readers_refuse(path, {path, "corrupt JPEG", "320 codes"});
  // The same after 0xFF fill bytes before the start of image, which stb skips.
  const auto filled = (dir.path() / "filled.jpg").string();
  spew(filled, std::string("\xff\xff\xff", 3) + jpeg.substr(1));
  expect_both_readers_refuse(filled, {filled, "320 codes"});
  // The same table with 16 x 16 = 256 codes is what stb accepts (it then fails on the missing
  // frame header, as a truncated JPEG should).
  std::string ok = {'\x00'};
  ok += std::string(16, '\x10');
  ok += std::string(256, '\x01');
  const auto len_ok = static_cast<uint16_t>(ok.size() + 2);
  const auto trunc = (dir.path() / "truncated.jpg").string();
  spew(trunc, std::string("\xff\xd8\xff\xc4", 4) + char(len_ok >> 8) + char(len_ok & 0xff) + ok);
  try {
    load_image(trunc);
    ADD_FAILURE() << "a JPEG without a frame decoded";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()).find("Huffman table"), std::string::npos) << e.what();
  }
}

TEST(ImageIo, FormatsOutsidePngJpegBmpAreNotRead) {
  // GIF (stb's decoder has known memory-safety bugs in this version) is refused, naming the file.
  test::TempDir dir;
  const auto gif = (dir.path() / "a.gif").string();
  std::string bytes = "GIF89a";
  bytes += {1, 0, 1, 0, 0, 0, 0, ',', 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 'D', 1, 0, ';'};
  spew(gif, bytes);
  expect_both_readers_refuse(gif, {gif});
  // PNM neither (found by fuzzing: stb's header parser overflows int on a long width).
  const auto pgm = (dir.path() / "a.pgm").string();
  spew(pgm, "P5\n6666666666 1\n255\n" + std::string(4, '\x7f'));
  expect_both_readers_refuse(pgm, {pgm});
}

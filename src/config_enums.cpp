// parse / to_string for the enums declared in config.h.
#include "diffuse/config.h"
#include "diffuse/error.h"

namespace diffuse {

std::vector<std::string> model_type_names() { return {"unet", "mlp", "classifier"}; }
ModelType parse_model_type(const std::string& n) {
  if (n == "unet") return ModelType::UNet;
  if (n == "mlp") return ModelType::Mlp;
  if (n == "classifier") return ModelType::Classifier;
  throw_not_one_of("model type", n, model_type_names());
}
std::string to_string(ModelType v) {
  switch (v) {
    case ModelType::UNet: return "unet";
    case ModelType::Mlp: return "mlp";
    case ModelType::Classifier: return "classifier";
  }
  return "?";
}

std::vector<std::string> classifier_pool_names() { return {"attention", "adaptive", "spatial", "spatial_v2"}; }
ClassifierPool parse_classifier_pool(const std::string& n) {
  if (n == "attention") return ClassifierPool::Attention;
  if (n == "adaptive") return ClassifierPool::Adaptive;
  if (n == "spatial") return ClassifierPool::Spatial;
  if (n == "spatial_v2") return ClassifierPool::SpatialV2;
  throw_not_one_of("classifier pool", n, classifier_pool_names());
}
std::string to_string(ClassifierPool v) {
  switch (v) {
    case ClassifierPool::Attention: return "attention";
    case ClassifierPool::Adaptive: return "adaptive";
    case ClassifierPool::Spatial: return "spatial";
    case ClassifierPool::SpatialV2: return "spatial_v2";
  }
  return "?";
}

std::vector<std::string> dataset_kind_names() {
  return {"fashion-mnist", "mnist", "cifar10", "folder", "toy2d", "synthetic"};
}
DatasetKind parse_dataset_kind(const std::string& n) {
  if (n == "fashion-mnist" || n == "fashion_mnist") return DatasetKind::FashionMnist;
  if (n == "mnist") return DatasetKind::Mnist;
  if (n == "cifar10" || n == "cifar-10") return DatasetKind::Cifar10;
  if (n == "folder" || n == "image-folder") return DatasetKind::ImageFolder;
  if (n == "toy2d" || n == "toy") return DatasetKind::Toy2d;
  if (n == "synthetic") return DatasetKind::Synthetic;
  throw_not_one_of("dataset", n, dataset_kind_names());
}
std::string to_string(DatasetKind v) {
  switch (v) {
    case DatasetKind::FashionMnist: return "fashion-mnist";
    case DatasetKind::Mnist: return "mnist";
    case DatasetKind::Cifar10: return "cifar10";
    case DatasetKind::ImageFolder: return "folder";
    case DatasetKind::Toy2d: return "toy2d";
    case DatasetKind::Synthetic: return "synthetic";
  }
  return "?";
}

std::vector<std::string> toy_kind_names() { return {"swiss_roll", "two_moons", "8gaussians", "checkerboard"}; }
ToyKind parse_toy_kind(const std::string& n) {
  if (n == "swiss_roll" || n == "swissroll") return ToyKind::SwissRoll;
  if (n == "two_moons" || n == "moons") return ToyKind::TwoMoons;
  if (n == "8gaussians" || n == "eight_gaussians") return ToyKind::EightGaussians;
  if (n == "checkerboard") return ToyKind::Checkerboard;
  throw_not_one_of("toy distribution", n, toy_kind_names());
}
std::string to_string(ToyKind v) {
  switch (v) {
    case ToyKind::SwissRoll: return "swiss_roll";
    case ToyKind::TwoMoons: return "two_moons";
    case ToyKind::EightGaussians: return "8gaussians";
    case ToyKind::Checkerboard: return "checkerboard";
  }
  return "?";
}

}  // namespace diffuse

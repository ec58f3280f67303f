// parse / to_string for the enums declared in config.h.
#include "diffuse/config.h"
#include "diffuse/error.h"
#include "enum_names.h"

namespace diffuse {

namespace {
const EnumNames<ModelType>& model_types() {
  static const EnumNames<ModelType> table(
      "model type", {{ModelType::UNet, "unet"}, {ModelType::Mlp, "mlp"}, {ModelType::Classifier, "classifier"}});
  return table;
}
}  // namespace
std::vector<std::string> model_type_names() { return model_types().names(); }
ModelType parse_model_type(const std::string& name) { return model_types().parse(name); }
std::string to_string(ModelType v) { return model_types().to_string(v); }

namespace {
const EnumNames<ClassifierPool>& classifier_pools() {
  static const EnumNames<ClassifierPool> table("classifier pool", {{ClassifierPool::Attention, "attention"},
                                                                   {ClassifierPool::Adaptive, "adaptive"},
                                                                   {ClassifierPool::Spatial, "spatial"},
                                                                   {ClassifierPool::SpatialV2, "spatial_v2"}});
  return table;
}
}  // namespace
std::vector<std::string> classifier_pool_names() { return classifier_pools().names(); }
ClassifierPool parse_classifier_pool(const std::string& name) { return classifier_pools().parse(name); }
std::string to_string(ClassifierPool v) { return classifier_pools().to_string(v); }

namespace {
const EnumNames<DatasetKind>& dataset_kinds() {
  static const EnumNames<DatasetKind> table("dataset", {{DatasetKind::FashionMnist, "fashion-mnist", {"fashion_mnist"}},
                                                        {DatasetKind::Mnist, "mnist"},
                                                        {DatasetKind::Cifar10, "cifar10", {"cifar-10"}},
                                                        {DatasetKind::ImageFolder, "folder", {"image-folder"}},
                                                        {DatasetKind::Toy2d, "toy2d", {"toy"}},
                                                        {DatasetKind::Synthetic, "synthetic"}});
  return table;
}
}  // namespace
std::vector<std::string> dataset_kind_names() { return dataset_kinds().names(); }
DatasetKind parse_dataset_kind(const std::string& name) { return dataset_kinds().parse(name); }
std::string to_string(DatasetKind v) { return dataset_kinds().to_string(v); }

namespace {
const EnumNames<ToyKind>& toy_kinds() {
  static const EnumNames<ToyKind> table("toy distribution",
                                        {{ToyKind::SwissRoll, "swiss_roll", {"swissroll"}},
                                         {ToyKind::TwoMoons, "two_moons", {"moons"}},
                                         {ToyKind::EightGaussians, "8gaussians", {"eight_gaussians"}},
                                         {ToyKind::Checkerboard, "checkerboard"}});
  return table;
}
}  // namespace
std::vector<std::string> toy_kind_names() { return toy_kinds().names(); }
ToyKind parse_toy_kind(const std::string& name) { return toy_kinds().parse(name); }
std::string to_string(ToyKind v) { return toy_kinds().to_string(v); }

}  // namespace diffuse

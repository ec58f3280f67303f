// One name table per enum: its canonical names (listed in messages and docs, written back into
// configs), the aliases a config may also use, and the names / parse / to_string trio built
// from that one table. Private to src/.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "diffuse/error.h"

namespace diffuse {

template <class E>
struct EnumName {
  E value;
  const char* name;
  std::vector<const char*> aliases = {};
};

template <class E>
class EnumNames {
 public:
  // `what` names the setting in errors: "<what> '<value>' is not one of: a, b".
  EnumNames(const char* what, std::vector<EnumName<E>> entries) : what_(what), entries_(std::move(entries)) {}

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& e : entries_) out.emplace_back(e.name);
    return out;
  }

  E parse(const std::string& name) const {
    for (const auto& e : entries_) {
      if (name == e.name) return e.value;
      for (const char* alias : e.aliases)
        if (name == alias) return e.value;
    }
    throw_not_one_of(what_, name, names());
  }

  std::string to_string(E value) const {
    for (const auto& e : entries_)
      if (e.value == value) return e.name;
    return "?";
  }

 private:
  const char* what_;
  std::vector<EnumName<E>> entries_;
};

}  // namespace diffuse

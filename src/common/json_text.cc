#include "common/json_text.h"

#include <cstdio>
#include <nlohmann/json.hpp>

namespace lifeline {
namespace {

// The length of the well-formed UTF-8 sequence at text[i], or 0 when the byte there starts none.
size_t sequence_length(std::string_view text, size_t i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  unsigned char b = byte(i);
  if (b < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (b >= 0xC2 && b <= 0xDF) {
    n = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    n = 3;
    if (b == 0xE0) lo = 0xA0;  // overlong
    if (b == 0xED) hi = 0x9F;  // surrogates
  } else if (b >= 0xF0 && b <= 0xF4) {
    n = 4;
    if (b == 0xF0) lo = 0x90;  // overlong
    if (b == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return 0;  // a continuation byte, an overlong lead (C0, C1) or F5..FF
  }
  if (i + n > text.size()) return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k)
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
  return n;
}

template <class J>
bool strings_valid(const J& j) {
  if (j.is_string()) return is_valid_utf8(j.template get_ref<const typename J::string_t&>());
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it)
      if (!is_valid_utf8(it.key()) || !strings_valid(it.value())) return false;
    return true;
  }
  if (j.is_array()) {
    for (const auto& v : j)
      if (!strings_valid(v)) return false;
  }
  return true;
}

template <class J>
J with_valid_strings(const J& j) {
  if (j.is_string()) return J(valid_utf8(j.template get_ref<const typename J::string_t&>()));
  if (j.is_object()) {
    J out = J::object();
    for (auto it = j.begin(); it != j.end(); ++it) out[valid_utf8(it.key())] = with_valid_strings(it.value());
    return out;
  }
  if (j.is_array()) {
    J out = J::array();
    for (const auto& v : j) out.push_back(with_valid_strings(v));
    return out;
  }
  return j;
}

template <class J>
std::string dump_valid(const J& j, int indent) {
  constexpr auto replace = J::error_handler_t::replace;
  if (strings_valid(j)) return j.dump(indent, ' ', false, replace);
  return with_valid_strings(j).dump(indent, ' ', false, replace);
}

}  // namespace

bool is_valid_utf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    size_t n = sequence_length(text, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string valid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    size_t n = sequence_length(text, i);
    if (n == 0) {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(text[i]));
      out += buf;
      ++i;
    } else {
      out.append(text.data() + i, n);
      i += n;
    }
  }
  return out;
}

std::string dump_json(const nlohmann::json& j, int indent) { return dump_valid(j, indent); }
std::string dump_json(const nlohmann::ordered_json& j, int indent) { return dump_valid(j, indent); }

}  // namespace lifeline

#pragma once
// Text that goes into JSON: nlohmann::json refuses to serialise a string that is not valid
// UTF-8 (type_error.316), and a path, a parser message or a metric name can carry any bytes.
// Every JSON lifeline writes goes through dump_json, which never throws for that reason.
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>

namespace lifeline {

// True when `text` is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing
// above U+10FFFF).
bool is_valid_utf8(std::string_view text);

// `text` with every byte that is not part of a well-formed UTF-8 sequence written as the four
// characters `\xNN` (lowercase hex); valid UTF-8, control characters included, is kept as is.
std::string valid_utf8(std::string_view text);

// j.dump(indent), with every string and object key that is not valid UTF-8 made valid first
// (valid_utf8), and nlohmann's error_handler_t::replace as the backstop: it never throws for
// the text it holds. Use it for every JSON lifeline prints or writes.
std::string dump_json(const nlohmann::json& j, int indent = -1);
std::string dump_json(const nlohmann::ordered_json& j, int indent = -1);

}  // namespace lifeline

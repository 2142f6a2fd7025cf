// Text that goes into JSON: valid_utf8 keeps valid UTF-8 and writes every other byte as \xNN,
// and dump_json never throws on the strings it holds, whatever bytes they came with.
#include <doctest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "common/json_text.h"

using namespace lifeline;

TEST_CASE("valid UTF-8 is kept byte for byte, control characters and NUL included") {
  for (std::string s : {std::string(""), std::string("plain ascii"), std::string("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
                        std::string("tab\tnew\nline", 13), std::string("nul\0byte", 8), std::string("\xef\xbf\xbf"),
                        std::string("\xf4\x8f\xbf\xbf")}) {
    CAPTURE(s);
    CHECK(is_valid_utf8(s));
    CHECK(valid_utf8(s) == s);
  }
}

TEST_CASE("every byte outside a well-formed UTF-8 sequence is written as \\xNN and the rest kept") {
  CHECK(valid_utf8("a\xff" "b") == "a\\xffb");
  CHECK(valid_utf8("\x80") == "\\x80");                          // a lone continuation byte
  CHECK(valid_utf8("\xc3") == "\\xc3");                          // truncated at the end
  CHECK(valid_utf8("\xc3(") == "\\xc3(");                        // truncated before ASCII
  CHECK(valid_utf8("\xc0\xaf") == "\\xc0\\xaf");                  // overlong '/'
  CHECK(valid_utf8("\xe0\x80\xaf") == "\\xe0\\x80\\xaf");          // overlong, three bytes
  CHECK(valid_utf8("\xed\xa0\x80") == "\\xed\\xa0\\x80");          // a UTF-16 surrogate
  CHECK(valid_utf8("\xf4\x90\x80\x80") == "\\xf4\\x90\\x80\\x80");  // above U+10FFFF
  CHECK(valid_utf8("\xf5\x80") == "\\xf5\\x80");
  CHECK(valid_utf8("ok \xc3\xa9 \xfe end") == "ok \xc3\xa9 \\xfe end");
  for (std::string s : {"\xff", "\xc3", "\xed\xa0\x80", "x\xf0\x9f\x98"}) {
    CAPTURE(s);
    CHECK_FALSE(is_valid_utf8(s));
    CHECK(is_valid_utf8(valid_utf8(s)));
  }
}

TEST_CASE("dump_json writes strings and keys with invalid bytes as \\xNN instead of throwing type_error 316") {
  nlohmann::json j = {{"path", "/ckpt/\xff/step"}, {"list", {"ok", "bad\xfe"}}, {"nested", {{"k\xc3", 1}}}};
  CHECK_THROWS_AS(j.dump(), nlohmann::json::type_error);  // what every JSON output did
  std::string text;
  REQUIRE_NOTHROW(text = dump_json(j));
  nlohmann::json back = nlohmann::json::parse(text);
  CHECK(back["path"] == "/ckpt/\\xff/step");
  CHECK(back["list"][1] == "bad\\xfe");
  CHECK(back["nested"]["k\\xc3"] == 1);

  nlohmann::ordered_json o = {{"z", "\xff"}, {"a", 2}};
  REQUIRE_NOTHROW(text = dump_json(o, 2));
  CHECK(text == "{\n  \"z\": \"\\\\xff\",\n  \"a\": 2\n}");
  CHECK(dump_json(nlohmann::json{{"fine", "caf\xc3\xa9"}}) == nlohmann::json{{"fine", "caf\xc3\xa9"}}.dump());
}

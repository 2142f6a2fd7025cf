// libFuzzer target: any bytes given to parse_policy either give a Policy or a PolicyError;
// no other exception, crash, leak or hang. Accepted policies are also explained, to cover
// the arithmetic on extreme values.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "policy/explain.h"
#include "policy/policy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    std::vector<std::string> warnings;
    lifeline::Policy p = lifeline::parse_policy(text, "fuzz.yaml", warnings);
    lifeline::ExplainInputs in;
    in.checkpoint_bytes = 1ULL << 30;
    in.run_seconds = 86400;
    in.step_seconds = 0.5;
    in.interruptions_per_day = 3;
    lifeline::Explanation e = lifeline::explain_policy(p, in);
    (void)lifeline::render_explanation(p, in, e);
    (void)lifeline::summarize_policy(p);
  } catch (const lifeline::PolicyError&) {
    // The one allowed way to reject input.
  }
  return 0;
}

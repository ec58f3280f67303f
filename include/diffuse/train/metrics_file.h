// metrics.jsonl, the run's log of one JSON object per line with a "step" key: what a resume
// keeps of it.
#pragma once

#include <cstdint>
#include <string>

namespace diffuse {

// The lines of `text` whose "step" is at most `step`, each ending in a newline. A line that is
// not one whole JSON object with an integer "step" (torn by a crash or a full disk) is dropped
// wherever it is.
std::string metrics_lines_through(const std::string& text, int64_t step);

// Rewrites the file at `path` (atomically) to metrics_lines_through(step); no file, no change.
// A resume from an older checkpoint replays the later steps, so their lines must go.
void truncate_metrics(const std::string& path, int64_t step);

}  // namespace diffuse

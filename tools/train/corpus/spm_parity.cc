// Encode documents with the C++ sentencepiece library (Debian's 0.1.97, the version the
// server links) and check that decoding gives the text back.
//
// usage: spm_parity MODEL DOCS_FILE > ids.txt
//   DOCS_FILE holds documents separated by NUL bytes (they may contain newlines).
//   Output: one line per document, the ids separated by spaces.  Exit status 1 if any
//   document fails to decode back to itself (reported on stderr).
#include <sentencepiece_processor.h>

#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: spm_parity MODEL DOCS_FILE\n";
    return 2;
  }
  sentencepiece::SentencePieceProcessor sp;
  const auto st = sp.Load(argv[1]);
  if (!st.ok()) {
    std::cerr << st.ToString() << "\n";
    return 2;
  }
  std::ifstream in(argv[2], std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string all = ss.str();
  size_t start = 0, ndocs = 0, bad = 0;
  while (start <= all.size()) {
    size_t end = all.find('\0', start);
    if (end == std::string::npos) end = all.size();
    const std::string doc = all.substr(start, end - start);
    std::vector<int> ids;
    if (!sp.Encode(doc, &ids).ok()) return 3;
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
    std::cout << "\n";
    std::string back;
    if (!sp.Decode(ids, &back).ok() || back != doc) {
      ++bad;
      std::cerr << "decode mismatch in document " << ndocs << "\n";
    }
    ++ndocs;
    if (end == all.size()) break;
    start = end + 1;
  }
  std::cerr << "documents=" << ndocs << " decode_mismatches=" << bad << "\n";
  return bad ? 1 : 0;
}

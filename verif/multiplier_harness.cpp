// Evaluates the Verilated multiplier bank (verif/multiplier_bank.py) on every int8 operand pair and writes
// the products to stdout as little-endian int16: for x = -128..127, for w = -128..127, PRODUCTS values.
#include <cstdint>
#include <cstdio>
#include <vector>
#include "Vtop.h"
#include "bank.h"

// products is a packed array of 16-bit fields: Verilator holds it as an integer or as a VlWide of 32-bit words
static uint32_t word_of(uint32_t v, uint32_t word) { return word ? 0 : v; }
static uint32_t word_of(uint64_t v, uint32_t word) { return static_cast<uint32_t>(v >> (32 * word)); }
template <std::size_t N> static uint32_t word_of(const VlWide<N>& v, uint32_t word) { return v[word]; }

int main() {
    Vtop top;
    std::vector<int16_t> out;
    out.reserve(256 * 256 * PRODUCTS);
    for (int x = -128; x < 128; ++x) {
        for (int w = -128; w < 128; ++w) {
            top.x = static_cast<uint8_t>(x);
            top.w = static_cast<uint8_t>(w);
            top.eval();
            for (int i = 0; i < PRODUCTS; ++i) {
                uint32_t value = word_of(top.products, i / 2) >> (16 * (i % 2));
                out.push_back(static_cast<int16_t>(value & 0xffff));
            }
        }
    }
    fwrite(out.data(), sizeof(int16_t), out.size(), stdout);
    return 0;
}

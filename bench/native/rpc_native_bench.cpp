// Native baseline for sdrpc-bench: time SET_TENSOR / GET_TENSOR through
// llama.cpp's own RPC client (ggml_backend_rpc_*), against a running rpc-server.
//
//   rpc-native-bench HOST:PORT SIZE_BYTES REPEATS
//
// Prints one JSON object on stdout:
//   {"bytes": N, "set_s": [..], "get_s": [..], "latency_s": [..], "verified": true}
// SET timings include a 4-byte GET_TENSOR afterwards (SET_TENSOR has no reply
// since protocol v2): the same barrier sdrpc_build.bench.link uses, so the two
// clients are timed the same way. Must be built with the server's GGML_MAX_NAME.
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-rpc.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using clk = std::chrono::steady_clock;

static double seconds_since(clk::time_point t0) {
    return std::chrono::duration<double>(clk::now() - t0).count();
}

static void print_list(const char * key, const std::vector<double> & v, bool last) {
    std::printf("\"%s\": [", key);
    for (size_t i = 0; i < v.size(); i++) {
        std::printf("%s%.9f", i ? ", " : "", v[i]);
    }
    std::printf("]%s", last ? "" : ", ");
}

int main(int argc, char ** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s HOST:PORT SIZE_BYTES REPEATS\n", argv[0]);
        return 2;
    }
    const char * endpoint = argv[1];
    const size_t size = std::strtoull(argv[2], nullptr, 10);
    const int repeats = std::atoi(argv[3]);
    if (size < 4 || size % 4 != 0 || repeats < 1 || repeats > 1000) {
        std::fprintf(stderr, "SIZE_BYTES must be a positive multiple of 4, REPEATS 1..1000\n");
        return 2;
    }

    ggml_backend_t backend = ggml_backend_rpc_init(endpoint, 0);
    if (backend == nullptr) {
        std::fprintf(stderr, "cannot connect to %s\n", endpoint);
        return 1;
    }

    ggml_init_params params = {
        /* .mem_size   = */ 2 * ggml_tensor_overhead(),
        /* .mem_buffer = */ nullptr,
        /* .no_alloc   = */ true,
    };
    ggml_context * ctx = ggml_init(params);
    ggml_tensor * t = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, (int64_t)(size / 4));
    ggml_set_name(t, "sdrpc-native-bench");
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, backend);
    if (buf == nullptr) {
        std::fprintf(stderr, "remote allocation of %zu bytes failed\n", size);
        return 1;
    }

    std::vector<uint8_t> src(size), dst(size);
    uint32_t x = 2463534242u;  // xorshift32: incompressible, reproducible
    for (size_t i = 0; i < size; i++) {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        src[i] = (uint8_t)x;
    }
    uint8_t probe[4];

    std::vector<double> set_s, get_s, lat_s;
    for (int r = 0; r < repeats; r++) {
        auto t0 = clk::now();
        ggml_backend_tensor_get(t, probe, 0, sizeof(probe));
        lat_s.push_back(seconds_since(t0));

        t0 = clk::now();
        ggml_backend_tensor_set(t, src.data(), 0, size);
        ggml_backend_tensor_get(t, probe, 0, sizeof(probe));  // barrier: SET has no reply
        set_s.push_back(seconds_since(t0));

        t0 = clk::now();
        ggml_backend_tensor_get(t, dst.data(), 0, size);
        get_s.push_back(seconds_since(t0));
    }
    const bool verified = std::memcmp(src.data(), dst.data(), size) == 0;

    std::printf("{\"bytes\": %zu, ", size);
    print_list("set_s", set_s, false);
    print_list("get_s", get_s, false);
    print_list("latency_s", lat_s, false);
    std::printf("\"verified\": %s}\n", verified ? "true" : "false");

    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    ggml_backend_free(backend);
    return verified ? 0 : 3;
}

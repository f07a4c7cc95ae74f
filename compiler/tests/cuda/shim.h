// Host shim for emulating generated CUDA C kernels on the CPU (compiler/tests/cuda_emulation.rs).
// Every thread of a launch is a std::thread; the 32 lanes of a warp run together and meet at a
// barrier in each __shfl_down_sync, so shuffles see their partners' values exactly as a warp
// in lockstep would. Warps and blocks run one after another (the kernels never synchronise
// beyond a warp).
#include <math.h>
#include <string.h>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

struct lorac_dim3 { unsigned x, y, z; };
thread_local lorac_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict

inline float __int_as_float(unsigned v) { float f; memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float f) { int v; memcpy(&v, &f, 4); return v; }

struct LoracWarp {
    std::mutex m;
    std::condition_variable cv;
    int count = 0, gen = 0, lanes = 32;
    double slot[32];
    void sync() {
        std::unique_lock<std::mutex> l(m);
        int g = gen;
        if (++count == lanes) { count = 0; gen++; cv.notify_all(); }
        else cv.wait(l, [&] { return gen != g; });
    }
};
thread_local LoracWarp* lorac_warp;
thread_local int lorac_lane;

template <class T> T __shfl_down_sync(unsigned, T v, int off) {
    LoracWarp& w = *lorac_warp;
    w.sync();  // every lane has read the previous shuffle's slots
    w.slot[lorac_lane] = (double)v;
    w.sync();  // every lane has written
    int src = lorac_lane + off;
    return src < 32 ? (T)w.slot[src] : v;
}

// Runs `f` on every thread of a `grid × block` launch (`block` a multiple of 32).
template <class F> void lorac_launch(unsigned grid, unsigned block, F f) {
    for (unsigned b = 0; b < grid; b++)
        for (unsigned w = 0; w * 32 < block; w++) {
            LoracWarp warp;
            std::vector<std::thread> ts;
            for (unsigned l = 0; l < 32; l++)
                ts.emplace_back([&, b, w, l] {
                    threadIdx = {w * 32 + l, 0, 0};
                    blockIdx = {b, 0, 0};
                    blockDim = {block, 1, 1};
                    gridDim = {grid, 1, 1};
                    lorac_warp = &warp;
                    lorac_lane = (int)l;
                    f();
                });
            for (auto& t : ts) t.join();
        }
}

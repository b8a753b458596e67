// fastfixed: a small, fast stand-in for the Xilinx ap_types headers, for fx2fpga's csim backend only.
//
// It implements the part of the ap_fixed / ap_int API that fx2fpga's generated HLS C++ uses, with the
// same results bit for bit as the fx2fpga emulator (and so as the vendor headers):
//   - ap_fixed<W,I,Q,O,N>, ap_ufixed<W,I,Q,O,N>, ap_int<W>, ap_uint<W>; rounding AP_RND, AP_TRN,
//     AP_RND_ZERO, AP_RND_CONV, AP_TRN_ZERO; overflow AP_SAT, AP_WRAP;
//   - exact expression arithmetic: a + b, a - b, a * b, -a have the vendor's exact result types
//     (``ff::fixed<W,I,S>``, truncating and wrapping like the vendor's ap_fixed_base<W,I,S>);
//   - on construction and assignment from another fixed value, an integer or a double: rounding (the
//     target's Q), then overflow (its O); +=, -=, *=; comparisons between fixed values and with integers;
//   - .range(hi, lo) read (into ap_int / ap_uint) and write (from an integer); to_int64, to_uint64,
//     to_double; on ap_uint, <<, >> (the width stays) and ^, ^= (stochastic rounding's hash).
// A value is stored as its raw two's-complement integer (raw = value * 2**F, F = W - I): a long long up to
// 64 bits (63 unsigned), an __int128 up to 128. Anything wider does not compile: a static_assert whose
// message starts with "fastfixed:" says so, and the csim backend then builds with the vendor headers.
#ifndef FX2FPGA_FASTFIXED_H
#define FX2FPGA_FASTFIXED_H

#define FX2FPGA_FASTFIXED 1

enum ap_q_mode { AP_RND, AP_RND_ZERO, AP_RND_MIN_INF, AP_RND_INF, AP_RND_CONV, AP_TRN, AP_TRN_ZERO };
enum ap_o_mode { AP_SAT, AP_SAT_ZERO, AP_SAT_SYM, AP_WRAP, AP_WRAP_SM };

#define FF_INLINE inline __attribute__((always_inline))

namespace ff {

typedef __int128 i128;
typedef unsigned __int128 u128;

// ----- raw integers ---------------------------------------------------------------------------------

template <bool Wide> struct int_of { typedef long long type; };
template <> struct int_of<true> { typedef i128 type; };

// The raw integer of a W-bit type (S: signed): long long while it fits, else __int128.
template <int W, bool S> struct raw_of {
    static_assert(W >= 1, "fastfixed: a width below 1");
    static_assert(W + !S <= 128, "fastfixed: a fixed-point value or exact intermediate wider than 128 bits");
    typedef typename int_of<(W + !S > 64)>::type type;
};

template <class T> struct bits_of { static const int value = 8 * (int)sizeof(T); };
template <class T> struct unsigned_of { typedef unsigned long long type; };
template <> struct unsigned_of<i128> { typedef u128 type; };
template <> struct unsigned_of<const i128> { typedef u128 type; };

// The wider of two raw integer types.
template <class A, class B> struct wider { typedef i128 type; };
template <> struct wider<long long, long long> { typedef long long type; };

constexpr int max_of(int a, int b) { return a > b ? a : b; }
constexpr int clamp_shift(int s, int bits) { return s < 0 ? 0 : (s >= bits ? bits - 1 : s); }

// The low W bits of v, sign-extended (S) or zero-extended.
template <int W, bool S, class T> FF_INLINE constexpr T wrap_bits(T v) {
    typedef typename unsigned_of<T>::type U;
    const int B = bits_of<T>::value;
    if (W >= B) return v;
    const int up = clamp_shift(B - W, B);
    if (S) return (T)(U(v) << up) >> up;  // g++: >> of a negative value is arithmetic
    return (T)(U(v) & ((U(1) << clamp_shift(W, B)) - 1));
}

// Smallest and largest raw values of a W-bit type, in a raw integer type T that holds them.
template <int W, bool S, class T> FF_INLINE constexpr T raw_min() {
    typedef typename unsigned_of<T>::type U;
    return S ? (T)(~U(0) << clamp_shift(W - 1, bits_of<T>::value)) : T(0);
}
template <int W, bool S, class T> FF_INLINE constexpr T raw_max() {
    typedef typename unsigned_of<T>::type U;
    return S ? (T)(~U(raw_min<W, S, T>())) : (T)((U(1) << clamp_shift(W, bits_of<T>::value)) - 1);
}

// v with its low Sh > 0 bits dropped, rounded with Q: the emulator's ``fixed.shift_round``.
template <ap_q_mode Q, int Sh, class T> FF_INLINE constexpr T shift_round(T v) {
    static_assert(Q == AP_RND || Q == AP_TRN || Q == AP_RND_ZERO || Q == AP_RND_CONV || Q == AP_TRN_ZERO,
                  "fastfixed: rounding modes other than AP_RND, AP_TRN, AP_RND_ZERO, AP_RND_CONV, AP_TRN_ZERO");
    typedef typename unsigned_of<T>::type U;
    const int B = bits_of<T>::value;
    if (Sh >= B) return (Q == AP_TRN && v < 0) ? T(-1) : T(0);  // |v| < 2**(Sh-1): 0 but floor's -1
    const int s = clamp_shift(Sh, B);
    const T floor = v >> s;
    const U rem = U(v) & ((U(1) << s) - 1);
    const U half = U(1) << (s - 1);
    switch (Q) {
    case AP_TRN:
        return floor;
    case AP_RND:
        return floor + T(rem >= half);
    case AP_TRN_ZERO:
        return floor + T(v < 0 && rem != 0);
    case AP_RND_ZERO:
        return floor + T(rem > half || (rem == half && v < 0));
    default:  // AP_RND_CONV: half to even
        return floor + T(rem > half || (rem == half && (floor & 1)));
    }
}

// A raw value (Ts, at Fs fractional bits) assigned to a W-bit type at F fractional bits (signed S):
// exact value rounded with Q, then saturated or wrapped with O. Returns the target's raw integer Td.
template <int W, int F, bool S, ap_q_mode Q, ap_o_mode O, class Td, int Fs, class Ts>
FF_INLINE constexpr Td convert(Ts v) {
    static_assert(O == AP_SAT || O == AP_WRAP, "fastfixed: overflow modes other than AP_SAT, AP_WRAP");
    typedef typename wider<Td, Ts>::type C;
    typedef typename unsigned_of<C>::type UC;
    const int B = bits_of<C>::value;
    if (Fs > F) {  // drop bits: round in the source's integer (the magnitude only shrinks)
        const C r = C(shift_round<Q, (Fs > F ? Fs - F : 1)>(v));
        if (O == AP_SAT) {
            if (r < raw_min<W, S, C>()) return Td(raw_min<W, S, C>());
            if (r > raw_max<W, S, C>()) return Td(raw_max<W, S, C>());
            return Td(r);
        }
        return Td(wrap_bits<W, S>(r));
    }
    const int k = F - Fs;  // append k zero bits
    if (O == AP_SAT) {  // compare before shifting: the shifted value may not fit any integer
        const C x = C(v), top = raw_max<W, S, C>(), bottom = raw_min<W, S, C>();
        if (k >= B) return x > 0 ? Td(top) : (x < 0 ? Td(bottom) : Td(0));
        const int s = clamp_shift(k, B);
        const C hi = top >> s;  // x << k <= top exactly when x <= floor(top / 2**k)
        const C lo = (S && k <= W - 1) ? C(bottom >> s) : C(0);  // ceil(bottom / 2**k)
        if (x > hi) return Td(top);
        if (x < lo) return Td(bottom);
        return Td(C(UC(x) << s));
    }
    if (k >= B) return Td(0);
    return Td(wrap_bits<W, S>(C(UC(C(v)) << clamp_shift(k, B))));
}

// ----- doubles ------------------------------------------------------------------------------------------

constexpr double pow2(int e) {
    double r = 1.0;
    for (; e > 0; e--) r *= 2.0;
    for (; e < 0; e++) r *= 0.5;
    return r;
}

// An integer-valued double x (|x| < 2**62) rounded from x with Q: the emulator's ``_round_float``.
template <ap_q_mode Q> constexpr long long round_double(double x) {
    const long long whole = (long long)x;  // towards zero
    const double frac = x - (double)whole;  // exact
    switch (Q) {
    case AP_TRN_ZERO:
        return whole;
    case AP_TRN:
        return whole - (frac < 0);
    case AP_RND:
        return whole + (frac >= 0.5) - (frac < -0.5);
    case AP_RND_ZERO:
        return whole + (frac > 0.5) - (frac < -0.5);
    default:  // AP_RND_CONV
        if (frac > 0.5 || (frac == 0.5 && (whole & 1))) return whole + 1;
        if (frac < -0.5 || (frac == -0.5 && (whole & 1))) return whole - 1;
        return whole;
    }
}

// A double assigned to a W-bit type at F fractional bits: the emulator's ``Fixed.quantize``.
template <int W, int F, bool S, ap_q_mode Q, ap_o_mode O, class Td> constexpr Td from_double(double d) {
    const double limit = pow2(62);
    double x = d * pow2(F);  // exact (a power of two), unless it leaves the range of doubles
    if (!(x == x)) return Td(0);  // NaN
    if (x >= limit || x <= -limit) {
        if (O == AP_SAT) return x > 0 ? raw_max<W, S, Td>() : raw_min<W, S, Td>();
        // an integer m * 2**e with e >= 10: modulo 2**W only m's low W - e bits count
        int e = 0;
        while (x >= limit || x <= -limit) {
            x *= 0.5;
            e++;
            if (e >= 128) return Td(0);
        }
        const long long m = (long long)x;
        return e >= W ? Td(0) : wrap_bits<W, S>(Td((typename unsigned_of<Td>::type)m << e));
    }
    return convert<W, F, S, Q, O, Td, F>(round_double<Q>(x));  // already at F: overflow only
}

// ----- the fixed-point type ----------------------------------------------------------------------------

template <int W, int I, bool S, ap_q_mode Q = AP_TRN, ap_o_mode O = AP_WRAP> struct fixed;

struct raw_tag {};

template <class T> struct integer_traits { static const bool ok = false; };
#define FF_INTEGER(T, SIGNED) \
    template <> struct integer_traits<T> { static const bool ok = true; static const bool s = SIGNED; };
FF_INTEGER(bool, false)
FF_INTEGER(char, true)
FF_INTEGER(signed char, true)
FF_INTEGER(unsigned char, false)
FF_INTEGER(short, true)
FF_INTEGER(unsigned short, false)
FF_INTEGER(int, true)
FF_INTEGER(unsigned, false)
FF_INTEGER(long, true)
FF_INTEGER(unsigned long, false)
FF_INTEGER(long long, true)
FF_INTEGER(unsigned long long, false)
#undef FF_INTEGER

// An integer as the exact fixed-point value of its width (int: fixed<32,32,true>).
template <class T> struct integer_fixed {
    static const int w = 8 * (int)sizeof(T);
    typedef fixed<w, w, integer_traits<T>::s> type;
};

// A writable or readable bit range [hi, lo] of a raw value (``x.range(hi, lo)``).
template <int W, bool S, class T> struct range_ref {
    T &raw;
    int hi, lo;
    FF_INLINE unsigned long long bits() const {
        typedef typename unsigned_of<T>::type U;
        const int n = hi - lo + 1;
        const U field = U(raw) >> lo;
        return (unsigned long long)(n >= 64 ? field : field & ((U(1) << n) - 1));
    }
    template <class V> FF_INLINE range_ref &operator=(V v) {
        static_assert(integer_traits<V>::ok, "fastfixed: .range() is assigned integers only");
        typedef typename unsigned_of<T>::type U;
        const int n = hi - lo + 1;
        const U mask = (n >= bits_of<T>::value ? ~U(0) : ((U(1) << n) - 1)) << lo;
        const U u = (U(raw) & ~mask) | ((U(T(v)) << lo) & mask);
        raw = wrap_bits<W, S>(T(u));
        return *this;
    }
    FF_INLINE unsigned long long to_uint64() const { return bits(); }
    FF_INLINE long long to_int64() const { return (long long)bits(); }
};

template <int W, int I, bool S, ap_q_mode Q, ap_o_mode O> struct fixed {
    typedef typename raw_of<W, S>::type raw_type;
    static const int width = W, iwidth = I, frac = W - I;
    static const bool is_signed = S;
    raw_type raw;

    fixed() = default;
    constexpr fixed(raw_tag, raw_type r) : raw(r) {}
    template <int W2, int I2, bool S2, ap_q_mode Q2, ap_o_mode O2>
    FF_INLINE constexpr fixed(const fixed<W2, I2, S2, Q2, O2> &x)
        : raw(convert<W, W - I, S, Q, O, raw_type, W2 - I2>(x.raw)) {}
    FF_INLINE constexpr fixed(double d) : raw(from_double<W, W - I, S, Q, O, raw_type>(d)) {}
    FF_INLINE constexpr fixed(float d) : raw(from_double<W, W - I, S, Q, O, raw_type>(d)) {}
#define FF_FROM_INTEGER(T)                                                                        \
    FF_INLINE constexpr fixed(T v)                                                                \
        : raw(convert<W, W - I, S, Q, O, raw_type, 0>(                                            \
              (typename raw_of<integer_fixed<T>::w, integer_traits<T>::s>::type)v)) {}
    FF_FROM_INTEGER(bool)
    FF_FROM_INTEGER(char)
    FF_FROM_INTEGER(signed char)
    FF_FROM_INTEGER(unsigned char)
    FF_FROM_INTEGER(short)
    FF_FROM_INTEGER(unsigned short)
    FF_FROM_INTEGER(int)
    FF_FROM_INTEGER(unsigned)
    FF_FROM_INTEGER(long)
    FF_FROM_INTEGER(unsigned long)
    FF_FROM_INTEGER(long long)
    FF_FROM_INTEGER(unsigned long long)
#undef FF_FROM_INTEGER

    FF_INLINE range_ref<W, S, raw_type> range(int hi, int lo) { return range_ref<W, S, raw_type>{raw, hi, lo}; }
    FF_INLINE range_ref<W, S, raw_type> range() { return range(W - 1, 0); }
    FF_INLINE const range_ref<W, S, const raw_type> range(int hi, int lo) const {
        return range_ref<W, S, const raw_type>{raw, hi, lo};
    }
    FF_INLINE const range_ref<W, S, const raw_type> range() const { return range(W - 1, 0); }

    FF_INLINE double to_double() const { return (double)raw * pow2(I - W); }
    FF_INLINE float to_float() const { return (float)to_double(); }
};

// ----- exact arithmetic (the vendor's result types) ---------------------------------------------------

template <int W1, int I1, bool S1, int W2, int I2, bool S2> struct result {
    static const int f = max_of(W1 - I1, W2 - I2);
    static const int plus_i = max_of(I1 + (S2 && !S1), I2 + (S1 && !S2)) + 1;
    typedef fixed<plus_i + f, plus_i, S1 || S2> plus;
    typedef fixed<plus_i + f, plus_i, true> minus;
    typedef fixed<W1 + W2, I1 + I2, S1 || S2> mult;
};

// x's raw value at F fractional bits (F >= x's), in the raw integer T.
template <class T, int F, int W, int I, bool S, ap_q_mode Q, ap_o_mode O>
FF_INLINE constexpr T aligned(const fixed<W, I, S, Q, O> &x) {
    return T(typename unsigned_of<T>::type(T(x.raw)) << (F - (W - I)));
}

#define FF_TEMPLATE2 \
    template <int W1, int I1, bool S1, ap_q_mode Q1, ap_o_mode O1, int W2, int I2, bool S2, ap_q_mode Q2, ap_o_mode O2>
#define FF_ARGS1 const fixed<W1, I1, S1, Q1, O1> &a
#define FF_ARGS2 const fixed<W2, I2, S2, Q2, O2> &b

FF_TEMPLATE2 FF_INLINE constexpr typename result<W1, I1, S1, W2, I2, S2>::plus operator+(FF_ARGS1, FF_ARGS2) {
    typedef typename result<W1, I1, S1, W2, I2, S2>::plus R;
    typedef typename R::raw_type T;
    return R(raw_tag(), aligned<T, R::frac>(a) + aligned<T, R::frac>(b));
}

FF_TEMPLATE2 FF_INLINE constexpr typename result<W1, I1, S1, W2, I2, S2>::minus operator-(FF_ARGS1, FF_ARGS2) {
    typedef typename result<W1, I1, S1, W2, I2, S2>::minus R;
    typedef typename R::raw_type T;
    return R(raw_tag(), aligned<T, R::frac>(a) - aligned<T, R::frac>(b));
}

FF_TEMPLATE2 FF_INLINE constexpr typename result<W1, I1, S1, W2, I2, S2>::mult operator*(FF_ARGS1, FF_ARGS2) {
    typedef typename result<W1, I1, S1, W2, I2, S2>::mult R;
    typedef typename R::raw_type T;
    return R(raw_tag(), T(a.raw) * T(b.raw));
}

template <int W, int I, bool S, ap_q_mode Q, ap_o_mode O>
FF_INLINE constexpr fixed<W + 1, I + 1, true> operator-(const fixed<W, I, S, Q, O> &a) {
    typedef fixed<W + 1, I + 1, true> R;
    return R(raw_tag(), -typename R::raw_type(a.raw));
}

template <int W, int I, bool S, ap_q_mode Q, ap_o_mode O>
FF_INLINE constexpr fixed<W, I, S, Q, O> operator+(const fixed<W, I, S, Q, O> &a) {
    return a;
}

// Comparisons: both raw values at the finer of the two fractional bits, in an integer that holds both.
#define FF_COMPARE(OP)                                                                     \
    FF_TEMPLATE2 FF_INLINE constexpr bool operator OP(FF_ARGS1, FF_ARGS2) {                \
        typedef typename result<W1, I1, S1, W2, I2, S2>::minus R;                         \
        typedef typename R::raw_type T;                                                   \
        return aligned<T, R::frac>(a) OP aligned<T, R::frac>(b);                          \
    }                                                                                     \
    template <int W, int I, bool S, ap_q_mode Q, ap_o_mode O, class V,                    \
              class = typename std_enable_if<integer_traits<V>::ok>::type>                \
    FF_INLINE constexpr bool operator OP(const fixed<W, I, S, Q, O> &a, V b) {            \
        return a OP typename integer_fixed<V>::type(b);                                   \
    }                                                                                     \
    template <int W, int I, bool S, ap_q_mode Q, ap_o_mode O, class V,                    \
              class = typename std_enable_if<integer_traits<V>::ok>::type>                \
    FF_INLINE constexpr bool operator OP(V a, const fixed<W, I, S, Q, O> &b) {            \
        return typename integer_fixed<V>::type(a) OP b;                                   \
    }

template <bool B, class T = void> struct std_enable_if {};
template <class T> struct std_enable_if<true, T> { typedef T type; };

FF_COMPARE(==)
FF_COMPARE(!=)
FF_COMPARE(<)
FF_COMPARE(<=)
FF_COMPARE(>)
FF_COMPARE(>=)
#undef FF_COMPARE

// Arithmetic with an integer: the integer as the exact fixed value of its width.
#define FF_WITH_INTEGER(OP)                                                                \
    template <int W, int I, bool S, ap_q_mode Q, ap_o_mode O, class V,                    \
              class = typename std_enable_if<integer_traits<V>::ok>::type>                \
    FF_INLINE constexpr auto operator OP(const fixed<W, I, S, Q, O> &a, V b)              \
        -> decltype(a OP typename integer_fixed<V>::type(b)) {                            \
        return a OP typename integer_fixed<V>::type(b);                                   \
    }                                                                                     \
    template <int W, int I, bool S, ap_q_mode Q, ap_o_mode O, class V,                    \
              class = typename std_enable_if<integer_traits<V>::ok>::type>                \
    FF_INLINE constexpr auto operator OP(V a, const fixed<W, I, S, Q, O> &b)              \
        -> decltype(typename integer_fixed<V>::type(a) OP b) {                            \
        return typename integer_fixed<V>::type(a) OP b;                                   \
    }
FF_WITH_INTEGER(+)
FF_WITH_INTEGER(-)
FF_WITH_INTEGER(*)
#undef FF_WITH_INTEGER

}  // namespace ff

// ----- the ap_types names ---------------------------------------------------------------------------------

// The members every public type repeats: constructors from anything a fixed value is made from, and the
// compound assignments (the exact result, then this type's rounding and overflow).
#define FF_PUBLIC_MEMBERS(NAME, ...)                                                                  \
    typedef __VA_ARGS__ Base;                                                                              \
    NAME() = default;                                                                                 \
    template <class V> FF_INLINE constexpr NAME(const V &v) : Base(v) {}                              \
    template <class V> FF_INLINE NAME &operator=(const V &v) {                                        \
        Base::raw = Base(v).raw;                                                                      \
        return *this;                                                                                 \
    }                                                                                                 \
    template <class V> FF_INLINE NAME &operator+=(const V &v) { return *this = *this + v; }           \
    template <class V> FF_INLINE NAME &operator-=(const V &v) { return *this = *this - v; }           \
    template <class V> FF_INLINE NAME &operator*=(const V &v) { return *this = *this * v; }

template <int W, int I, ap_q_mode Q = AP_TRN, ap_o_mode O = AP_WRAP, int N = 0>
struct ap_fixed : ff::fixed<W, I, true, Q, O> {
    FF_PUBLIC_MEMBERS(ap_fixed, ff::fixed<W, I, true, Q, O>)
};

template <int W, int I, ap_q_mode Q = AP_TRN, ap_o_mode O = AP_WRAP, int N = 0>
struct ap_ufixed : ff::fixed<W, I, false, Q, O> {
    FF_PUBLIC_MEMBERS(ap_ufixed, ff::fixed<W, I, false, Q, O>)
};

// Integers: fixed values without fractional bits; assigning wraps, reading a .range() takes its bits.
template <int W> struct ap_int : ff::fixed<W, W, true, AP_TRN, AP_WRAP> {
    FF_PUBLIC_MEMBERS(ap_int, ff::fixed<W, W, true, AP_TRN, AP_WRAP>)
    template <int W2, bool S2, class T>
    FF_INLINE ap_int(const ff::range_ref<W2, S2, T> &r) : Base((long long)r.bits()) {}
    FF_INLINE long long to_int64() const { return (long long)Base::raw; }
    FF_INLINE unsigned long long to_uint64() const { return (unsigned long long)Base::raw; }
    FF_INLINE int to_int() const { return (int)Base::raw; }
};

template <int W> struct ap_uint : ff::fixed<W, W, false, AP_TRN, AP_WRAP> {
    FF_PUBLIC_MEMBERS(ap_uint, ff::fixed<W, W, false, AP_TRN, AP_WRAP>)
    template <int W2, bool S2, class T>
    FF_INLINE ap_uint(const ff::range_ref<W2, S2, T> &r) : Base(r.bits()) {}
    FF_INLINE long long to_int64() const { return (long long)Base::raw; }
    FF_INLINE unsigned long long to_uint64() const { return (unsigned long long)Base::raw; }
    FF_INLINE unsigned to_uint() const { return (unsigned)Base::raw; }
    // Shifts (0 <= s < W; the width stays, like the vendor's) and xor: stochastic rounding's xorshift.
    FF_INLINE ap_uint operator<<(int s) const { return bits(unsigned_raw(Base::raw) << s); }
    FF_INLINE ap_uint operator>>(int s) const { return bits(unsigned_raw(Base::raw) >> s); }
    FF_INLINE ap_uint operator^(const ap_uint &b) const { return bits(unsigned_raw(Base::raw) ^ unsigned_raw(b.raw)); }
    FF_INLINE ap_uint &operator^=(const ap_uint &b) { return *this = *this ^ b; }

  private:
    typedef typename Base::raw_type raw_type;
    typedef typename ff::unsigned_of<raw_type>::type unsigned_raw;
    static FF_INLINE ap_uint bits(unsigned_raw u) { return Base(ff::raw_tag(), ff::wrap_bits<W, false>(raw_type(u))); }
};

#undef FF_PUBLIC_MEMBERS

#endif  // FX2FPGA_FASTFIXED_H

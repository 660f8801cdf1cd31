#pragma once
// Just enough of NATS's decentralized auth, written from its published formats, to test
// .creds files without the nsc tool (not in Debian 12): ed25519 key pairs as NKeys (base32
// with a type prefix and a CRC-16), and JWTs signed with them ("ed25519-nkey").

#include <array>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <catch2/catch.hpp>

namespace test_env::nkeys {

enum class kind : std::uint8_t { operator_ = 14 << 3, account = 0, user = 20 << 3 };

inline std::uint16_t crc16(const std::string& bytes) {  // CRC-16/XMODEM, as NKeys use
  std::uint16_t crc = 0;
  for (unsigned char b : bytes) {
    crc ^= static_cast<std::uint16_t>(b << 8);
    for (int i = 0; i < 8; ++i) crc = static_cast<std::uint16_t>((crc & 0x8000) ? (crc << 1) ^ 0x1021 : crc << 1);
  }
  return crc;
}

/// `bytes` as text, `bits` bits a character from `alphabet`, without padding.
inline std::string encode_bits(const std::string& bytes, std::string_view alphabet, int bits_per_char) {
  std::string out;
  unsigned buffer = 0;
  int bits = 0;
  const unsigned mask = (1U << bits_per_char) - 1;
  for (unsigned char b : bytes) {
    buffer = (buffer << 8) | b;
    bits += 8;
    while (bits >= bits_per_char) {
      out += alphabet[(buffer >> (bits - bits_per_char)) & mask];
      bits -= bits_per_char;
    }
  }
  if (bits > 0) out += alphabet[(buffer << (bits_per_char - bits)) & mask];
  return out;
}
inline std::string base32(const std::string& bytes) {  // RFC 4648, as NKeys use it
  return encode_bits(bytes, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 5);
}
inline std::string base64url(const std::string& bytes) {  // as JWTs use it
  return encode_bits(bytes, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", 6);
}

inline std::string with_crc(std::string raw) {
  const std::uint16_t crc = crc16(raw);
  raw += static_cast<char>(crc & 0xff);
  raw += static_cast<char>(crc >> 8);
  return raw;
}

class key_pair {
 public:
  explicit key_pair(kind k) : kind_(k) {
    REQUIRE(RAND_bytes(seed_.data(), static_cast<int>(seed_.size())) == 1);
    key_.reset(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed_.data(), seed_.size()));
    REQUIRE(key_ != nullptr);
    std::size_t len = public_.size();
    REQUIRE(EVP_PKEY_get_raw_public_key(key_.get(), public_.data(), &len) == 1);
  }

  /// "O...", "A..." or "U...": the public key as servers and JWTs name it.
  [[nodiscard]] std::string public_key() const {
    std::string raw(1, static_cast<char>(kind_));
    raw.append(reinterpret_cast<const char*>(public_.data()), public_.size());
    return base32(with_crc(raw));
  }
  /// "SO...", "SA..." or "SU...": the secret a .creds file carries.
  [[nodiscard]] std::string seed() const {
    const auto k = static_cast<std::uint8_t>(kind_);
    std::string raw;
    raw += static_cast<char>((18 << 3) | (k >> 5));
    raw += static_cast<char>((k & 31) << 3);
    raw.append(reinterpret_cast<const char*>(seed_.data()), seed_.size());
    return base32(with_crc(raw));
  }
  [[nodiscard]] std::string sign(std::string_view data) const {
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
    REQUIRE(EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key_.get()) == 1);
    std::string sig(64, '\0');
    std::size_t len = sig.size();
    REQUIRE(EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                           reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1);
    return sig;
  }

 private:
  struct pkey_free {
    void operator()(EVP_PKEY* p) const noexcept { EVP_PKEY_free(p); }
  };
  kind kind_;
  std::array<unsigned char, 32> seed_{};
  std::array<unsigned char, 32> public_{};
  std::unique_ptr<EVP_PKEY, pkey_free> key_;
};

/// A JWT for `subject`, issued and signed by `issuer`; `nats` is the claims' "nats" object.
inline std::string jwt(const key_pair& issuer, const std::string& subject, const std::string& name,
                       const std::string& nats) {
  static int serial = 0;
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch());
  const std::string claims = "{\"jti\":\"OMNIBUSTEST" + std::to_string(++serial) + "\",\"iat\":" +
                             std::to_string(now.count()) + ",\"iss\":\"" + issuer.public_key() + "\",\"sub\":\"" +
                             subject + "\",\"name\":\"" + name + "\",\"nats\":" + nats + "}";
  const std::string signed_part =
      base64url(R"({"typ":"JWT","alg":"ed25519-nkey"})") + "." + base64url(claims);
  return signed_part + "." + base64url(issuer.sign(signed_part));
}

/// An operator, an account and a user of it: the server's configuration (operator mode, the
/// account preloaded in a memory resolver) and the user's .creds file.
struct decentralized_auth {
  key_pair op{kind::operator_};
  key_pair account{kind::account};
  key_pair system{kind::account};
  key_pair user{kind::user};

  [[nodiscard]] std::string server_config() const {
    const std::string op_jwt = jwt(op, op.public_key(), "omnibus-test", R"({"type":"operator","version":2})");
    const std::string limits =
        R"({"subs":-1,"data":-1,"payload":-1,"imports":-1,"exports":-1,"wildcards":true,"conn":-1,"leaf":-1,)"
        R"("mem_storage":-1,"disk_storage":-1,"streams":-1,"consumer":-1})";
    const std::string acc_jwt =
        jwt(op, account.public_key(), "app", R"({"limits":)" + limits + R"(,"type":"account","version":2})");
    const std::string sys_jwt = jwt(op, system.public_key(), "SYS", R"({"type":"account","version":2})");
    return "operator: \"" + op_jwt + "\"\nsystem_account: " + system.public_key() +
           "\nresolver: MEMORY\nresolver_preload: {\n  " + account.public_key() + ": \"" + acc_jwt + "\"\n  " +
           system.public_key() + ": \"" + sys_jwt + "\"\n}\n";
  }
  /// The user's credentials file; `seed_of` lets a test pair the JWT with another key's seed.
  [[nodiscard]] std::string creds(const key_pair* seed_of = nullptr) const {
    const std::string user_jwt = jwt(account, user.public_key(), "service",
                                     R"({"pub":{},"sub":{},"subs":-1,"data":-1,"payload":-1,"type":"user","version":2})");
    return "-----BEGIN NATS USER JWT-----\n" + user_jwt + "\n------END NATS USER JWT------\n\n" +
           "-----BEGIN USER NKEY SEED-----\n" + (seed_of != nullptr ? *seed_of : user).seed() +
           "\n------END USER NKEY SEED------\n";
  }
};

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  REQUIRE(out.good());
}

}  // namespace test_env::nkeys

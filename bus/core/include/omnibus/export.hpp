#pragma once
// OMNIBUS_API marks what Omnibus's shared libraries export. They are built with hidden
// visibility, so the ABI is exactly what the installed headers mark: everything else (NATS.c
// glue, SQL, failpoints) stays internal.

#if defined(__GNUC__) || defined(__clang__)
/// Exported from Omnibus's shared libraries (GCC and Clang, ELF).
#define OMNIBUS_API __attribute__((visibility("default")))
#else
/// Exported from Omnibus's shared libraries.
#define OMNIBUS_API
#endif

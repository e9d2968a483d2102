//! Policies, profiles, locks and each device's effective settings, with an explanation for every value.

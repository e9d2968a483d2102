//! Distribution point scopes, nearest-DP lookup, active/standby election with fencing epochs, and automatic assignment.

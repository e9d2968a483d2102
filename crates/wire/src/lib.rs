//! Frame format, message catalogue and sans-IO codec spoken between agents, gateways, distribution points and the Administration Server.

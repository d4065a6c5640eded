"""Local state of one VSN: the state dir, the operation lock, the deployed plan, the crash journal."""

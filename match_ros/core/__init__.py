"""Pure algorithmic core: no rclpy, no *_msgs imports (numpy, torch, OpenCV only)."""
